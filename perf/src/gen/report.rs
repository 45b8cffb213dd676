//! Shared result types: latency percentiles, failure counts, per-server
//! distribution, and printing a report as JSON and as a human summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency a histogram records, in microseconds (one hour); larger
/// values are recorded as this.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Significant decimal digits kept by every latency histogram.
const SIGNIFICANT_DIGITS: u8 = 3;

/// Creates an empty latency histogram in microseconds (1 µs to one hour, 3
/// significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGNIFICANT_DIGITS).expect("constant histogram bounds are valid")
}

/// Records `elapsed` in microseconds, clamped to [`MAX_LATENCY_US`].
pub fn record(hist: &mut Histogram<u64>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    hist.saturating_record(micros.min(MAX_LATENCY_US));
}

/// Adds `from` into `into`; both come from [`histogram`], so the bounds match.
pub fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    into.add(from)
        .expect("histograms made by report::histogram() have equal bounds");
}

/// Percentiles of one latency histogram, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Number of recorded values.
    pub count: u64,
    /// Smallest value.
    pub min: u64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p99_9: u64,
    /// Largest value.
    pub max: u64,
}

impl Latency {
    /// Summarises `hist`; all zeros if it is empty.
    pub fn from_histogram(hist: &Histogram<u64>) -> Latency {
        if hist.is_empty() {
            return Latency::default();
        }
        Latency {
            count: hist.len(),
            min: hist.min(),
            mean: (hist.mean() * 10.0).round() / 10.0,
            p50: hist.value_at_quantile(0.50),
            p90: hist.value_at_quantile(0.90),
            p99: hist.value_at_quantile(0.99),
            p99_9: hist.value_at_quantile(0.999),
            max: hist.max(),
        }
    }

    /// One human-readable line, e.g. `connect  n=10 p50=35 ... max=90 µs`.
    pub fn human(&self, label: &str) -> String {
        if self.count == 0 {
            return format!("  {label:<9} (no samples)");
        }
        format!(
            "  {label:<9} n={} p50={} p90={} p99={} p99.9={} max={} µs (mean {:.1})",
            self.count, self.p50, self.p90, self.p99, self.p99_9, self.max, self.mean
        )
    }
}

/// Why one operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The peer refused the connection (RST to SYN, or ICMP port unreachable).
    Refused,
    /// No answer within the operation timeout.
    Timeout,
    /// The connection was reset or aborted.
    Reset,
    /// The peer closed the connection before a complete answer.
    Closed,
    /// The answer could not be understood.
    Protocol,
    /// Anything else (e.g. no local port left); see stderr.
    Other,
}

impl FailureKind {
    /// Classifies a socket error.
    pub fn of(err: &io::Error) -> FailureKind {
        use io::ErrorKind as K;
        match err.kind() {
            K::ConnectionRefused => FailureKind::Refused,
            K::TimedOut | K::WouldBlock => FailureKind::Timeout,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => FailureKind::Reset,
            K::UnexpectedEof => FailureKind::Closed,
            K::InvalidData => FailureKind::Protocol,
            _ => FailureKind::Other,
        }
    }
}

/// Failed operations counted by [`FailureKind`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Failures {
    /// See [`FailureKind::Refused`].
    pub refused: u64,
    /// See [`FailureKind::Timeout`].
    pub timeout: u64,
    /// See [`FailureKind::Reset`].
    pub reset: u64,
    /// See [`FailureKind::Closed`].
    pub closed: u64,
    /// See [`FailureKind::Protocol`].
    pub protocol: u64,
    /// See [`FailureKind::Other`].
    pub other: u64,
}

impl Failures {
    /// Counts one failure of `kind`.
    pub fn add(&mut self, kind: FailureKind) {
        let slot = match kind {
            FailureKind::Refused => &mut self.refused,
            FailureKind::Timeout => &mut self.timeout,
            FailureKind::Reset => &mut self.reset,
            FailureKind::Closed => &mut self.closed,
            FailureKind::Protocol => &mut self.protocol,
            FailureKind::Other => &mut self.other,
        };
        *slot += 1;
    }

    /// Adds all counts of `other`.
    pub fn merge(&mut self, other: &Failures) {
        self.refused += other.refused;
        self.timeout += other.timeout;
        self.reset += other.reset;
        self.closed += other.closed;
        self.protocol += other.protocol;
        self.other += other.other;
    }

    /// All failures.
    pub fn total(&self) -> u64 {
        self.refused + self.timeout + self.reset + self.closed + self.protocol + self.other
    }

    /// `failures 3 (refused 3, ...)`, listing only non-zero kinds.
    pub fn human(&self) -> String {
        let kinds = [
            ("refused", self.refused),
            ("timeout", self.timeout),
            ("reset", self.reset),
            ("closed", self.closed),
            ("protocol", self.protocol),
            ("other", self.other),
        ];
        let detail: Vec<String> = kinds
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        if detail.is_empty() {
            "failures 0".to_owned()
        } else {
            format!("failures {} ({})", self.total(), detail.join(", "))
        }
    }
}

/// Answers per server, keyed by the name a `server=NAME` answer carried.
pub type ServerCounts = BTreeMap<String, u64>;

/// Adds `from` into `into`.
pub fn merge_counts(into: &mut ServerCounts, from: &ServerCounts) {
    for (name, n) in from {
        *into.entry(name.clone()).or_default() += n;
    }
}

/// `servers: a=10 b=12` (or nothing if no answer named a server).
pub fn servers_human(servers: &ServerCounts) -> Option<String> {
    if servers.is_empty() {
        return None;
    }
    let mut line = "  servers:".to_owned();
    for (name, n) in servers {
        let _ = write!(line, " {name}={n}");
    }
    Some(line)
}

/// A generator result that can be printed.
pub trait Report: Serialize {
    /// A few lines for people, without a trailing newline.
    fn human(&self) -> String;
}

/// Prints the human summary of `report` on stderr and, if `json`, the report
/// as one JSON object line on stdout.
pub fn print(report: &impl Report, json: bool) -> anyhow::Result<()> {
    eprintln!("{}", report.human());
    if json {
        println!("{}", serde_json::to_string(report)?);
    }
    Ok(())
}

/// Rounds `x` to 3 decimals, for rates and durations in JSON.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut hist = histogram();
        for us in 1..=1000 {
            record(&mut hist, Duration::from_micros(us));
        }
        let lat = Latency::from_histogram(&hist);
        assert_eq!(lat.count, 1000);
        assert_eq!(lat.min, 1);
        assert_eq!(lat.max, 1000);
        assert_eq!(lat.p50, 500);
        assert_eq!(lat.p90, 900);
        assert_eq!(lat.p99, 990);
        assert_eq!(lat.p99_9, 999);
        assert_eq!(Latency::from_histogram(&histogram()), Latency::default());
    }

    #[test]
    fn huge_latency_is_clamped() {
        let mut hist = histogram();
        record(&mut hist, Duration::from_secs(10 * 3600));
        assert!(hist.max() >= MAX_LATENCY_US);
        record(&mut hist, Duration::ZERO);
        assert_eq!(hist.min(), 0);
        assert_eq!(hist.len(), 2);
    }

    #[test]
    fn failure_kinds() {
        let kind = |k| FailureKind::of(&io::Error::from(k));
        assert_eq!(kind(io::ErrorKind::ConnectionRefused), FailureKind::Refused);
        assert_eq!(kind(io::ErrorKind::WouldBlock), FailureKind::Timeout);
        assert_eq!(kind(io::ErrorKind::BrokenPipe), FailureKind::Reset);
        let mut failures = Failures::default();
        failures.add(FailureKind::Refused);
        failures.add(FailureKind::Timeout);
        assert_eq!(failures.total(), 2);
        assert_eq!(failures.human(), "failures 2 (refused 1, timeout 1)");
    }
}
