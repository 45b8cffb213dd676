//! `http --phases T1,T2,...`: the run split at fixed offsets from its start into phases, each with its own
//! counts and latency histograms — to see what an event at a known time (a Key Server killed at T1 and
//! restarted at T2) did to the load, and whether the latency of the phases differs.
//!
//! An operation belongs to the phase in which it ended (completed or failed); a TLS handshake to the phase in
//! which it completed.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::gen::report::{self, Latency};
use crate::gen::tls::HandshakeCounts;
use rustls::HandshakeKind;

/// Quantiles printed for each phase's histograms (`1.0`: the maximum).
pub const HISTOGRAM_QUANTILES: [f64; 9] = [0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 0.9999, 0.99999, 1.0];

/// Parses `T1,T2,...` (seconds, strictly increasing, each above 0) into the phase boundaries.
pub fn parse_bounds(text: &str) -> Result<Vec<Duration>, String> {
    let mut out: Vec<Duration> = Vec::new();
    for part in text.split(',') {
        let secs: f64 = part
            .trim()
            .parse()
            .map_err(|_| format!("`{part}` is not a number of seconds"))?;
        if !(secs > 0.0 && secs.is_finite()) {
            return Err(format!("phase boundary {secs} must be above 0"));
        }
        let at = Duration::from_secs_f64(secs);
        if out.last().is_some_and(|&last| at <= last) {
            return Err("phase boundaries must increase".to_owned());
        }
        out.push(at);
    }
    Ok(out)
}

/// The phase (from 0) that `since_start` falls into: the number of boundaries at or before it.
pub fn index(bounds: &[Duration], since_start: Duration) -> usize {
    bounds.iter().take_while(|&&b| since_start >= b).count()
}

/// Where phase `i` begins (its boundary before it, or 0).
pub fn phase_start(bounds: &[Duration], i: usize) -> Duration {
    if i == 0 {
        Duration::ZERO
    } else {
        bounds[i - 1]
    }
}

/// What one worker saw in one phase.
#[derive(Debug, Clone)]
pub struct PhaseResult {
    /// Requests completed in this phase.
    pub completed: u64,
    /// Requests failed in this phase.
    pub failed: u64,
    /// TLS handshakes completed in this phase.
    pub handshakes: HandshakeCounts,
    /// Handshake latency.
    pub handshake: Histogram<u64>,
    /// Response latency.
    pub response: Histogram<u64>,
    /// Earliest completion, from the phase's start.
    pub first_completed: Option<Duration>,
    /// Latest failure, from the phase's start.
    pub last_failed: Option<Duration>,
}

impl PhaseResult {
    /// An empty phase.
    pub fn new() -> PhaseResult {
        PhaseResult {
            completed: 0,
            failed: 0,
            handshakes: HandshakeCounts::default(),
            handshake: report::histogram(),
            response: report::histogram(),
            first_completed: None,
            last_failed: None,
        }
    }

    /// A completed request `into_phase` after the phase began, that took `latency`.
    pub fn complete(&mut self, into_phase: Duration, latency: Duration) {
        self.completed += 1;
        report::record(&mut self.response, latency);
        self.first_completed = Some(self.first_completed.map_or(into_phase, |f| f.min(into_phase)));
    }

    /// A failed request `into_phase` after the phase began.
    pub fn fail(&mut self, into_phase: Duration) {
        self.failed += 1;
        self.last_failed = Some(self.last_failed.map_or(into_phase, |f| f.max(into_phase)));
    }

    /// A TLS handshake of `kind` that took `latency`.
    pub fn handshake(&mut self, kind: HandshakeKind, latency: Duration) {
        self.handshakes.add(kind);
        report::record(&mut self.handshake, latency);
    }

    /// Adds another worker's result of the same phase.
    pub fn merge(&mut self, other: &PhaseResult) {
        self.completed += other.completed;
        self.failed += other.failed;
        self.handshakes.merge(&other.handshakes);
        report::merge(&mut self.handshake, &other.handshake);
        report::merge(&mut self.response, &other.response);
        self.first_completed = min_opt(self.first_completed, other.first_completed);
        self.last_failed = match (self.last_failed, other.last_failed) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

impl Default for PhaseResult {
    fn default() -> Self {
        PhaseResult::new()
    }
}

fn min_opt(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One phase as reported.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// Start, seconds from the run's start.
    pub from_s: f64,
    /// End (the next boundary, or the run's duration).
    pub to_s: f64,
    /// Requests completed.
    pub completed: u64,
    /// Requests failed.
    pub failed: u64,
    /// Completed requests per second of the phase.
    pub rate: f64,
    /// TLS handshakes completed (HTTPS only).
    pub handshakes: Option<HandshakeCounts>,
    /// Seconds from the phase's start to its first completed request.
    pub first_completed_s: Option<f64>,
    /// Seconds from the phase's start to its last failed request.
    pub last_failed_s: Option<f64>,
    /// Latency percentiles.
    pub latency_us: PhaseLatency,
    /// The histograms at [`HISTOGRAM_QUANTILES`]: `[quantile, µs]` pairs.
    pub histogram_us: PhaseHistograms,
}

/// Latency percentiles of one phase, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseLatency {
    /// TLS handshakes.
    pub handshake: Latency,
    /// Requests.
    pub response: Latency,
}

/// Histograms of one phase at [`HISTOGRAM_QUANTILES`].
#[derive(Debug, Clone, Serialize)]
pub struct PhaseHistograms {
    /// TLS handshakes.
    pub handshake: Vec<(f64, u64)>,
    /// Requests.
    pub response: Vec<(f64, u64)>,
}

/// `hist` at [`HISTOGRAM_QUANTILES`] (empty if it has no values).
pub fn quantiles(hist: &Histogram<u64>) -> Vec<(f64, u64)> {
    if hist.is_empty() {
        return Vec::new();
    }
    HISTOGRAM_QUANTILES
        .iter()
        .map(|&q| {
            (
                q,
                if q >= 1.0 {
                    hist.max()
                } else {
                    hist.value_at_quantile(q)
                },
            )
        })
        .collect()
}

/// The report of each phase: `merged[i]` is phase `i` of all workers, `duration` the run's.
pub fn reports(bounds: &[Duration], merged: &[PhaseResult], duration: Duration, tls: bool) -> Vec<PhaseReport> {
    merged
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let from = phase_start(bounds, i);
            let to = bounds.get(i).copied().unwrap_or(duration).max(from);
            let secs = (to - from).as_secs_f64();
            PhaseReport {
                from_s: report::round3(from.as_secs_f64()),
                to_s: report::round3(to.as_secs_f64()),
                completed: p.completed,
                failed: p.failed,
                rate: if secs > 0.0 {
                    report::round3(p.completed as f64 / secs)
                } else {
                    0.0
                },
                handshakes: tls.then(|| p.handshakes.clone()),
                first_completed_s: p.first_completed.map(|d| report::round3(d.as_secs_f64())),
                last_failed_s: p.last_failed.map(|d| report::round3(d.as_secs_f64())),
                latency_us: PhaseLatency {
                    handshake: Latency::from_histogram(&p.handshake),
                    response: Latency::from_histogram(&p.response),
                },
                histogram_us: PhaseHistograms {
                    handshake: quantiles(&p.handshake),
                    response: quantiles(&p.response),
                },
            }
        })
        .collect()
}

/// Human-readable lines of the phases.
pub fn human(phases: &[PhaseReport]) -> Vec<String> {
    let mut lines = Vec::new();
    for p in phases {
        lines.push(format!(
            "  phase {:.1}-{:.1} s: {} completed ({:.0}/s), {} failed{}",
            p.from_s,
            p.to_s,
            p.completed,
            p.rate,
            p.failed,
            p.first_completed_s
                .map_or_else(String::new, |s| format!(", first completed after {s:.3} s"))
        ));
        if let Some(h) = &p.handshakes {
            lines.push(format!("    handshakes: {} full, {} resumed", h.full, h.resumed));
            lines.push(format!("  {}", p.latency_us.handshake.human("handshake")));
        }
        lines.push(format!("  {}", p.latency_us.response.human("response")));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_parse_and_index() {
        let b = parse_bounds("3,6").unwrap();
        assert_eq!(b, [Duration::from_secs(3), Duration::from_secs(6)]);
        assert_eq!(parse_bounds("0.5").unwrap(), [Duration::from_millis(500)]);
        for bad in ["", "3,3", "6,3", "0", "-1", "x", "3,,6", "inf"] {
            assert!(parse_bounds(bad).is_err(), "{bad}");
        }
        assert_eq!(index(&b, Duration::ZERO), 0);
        assert_eq!(index(&b, Duration::from_millis(2999)), 0);
        assert_eq!(index(&b, Duration::from_secs(3)), 1);
        assert_eq!(index(&b, Duration::from_millis(5999)), 1);
        assert_eq!(index(&b, Duration::from_secs(6)), 2);
        assert_eq!(index(&b, Duration::from_secs(60)), 2);
        assert_eq!(index(&[], Duration::from_secs(60)), 0);
        assert_eq!(phase_start(&b, 0), Duration::ZERO);
        assert_eq!(phase_start(&b, 2), Duration::from_secs(6));
    }

    #[test]
    fn phases_merge_and_report() {
        let b = parse_bounds("3,6").unwrap();
        let mut w1 = vec![PhaseResult::new(), PhaseResult::new(), PhaseResult::new()];
        let mut w2 = w1.clone();
        w1[0].complete(Duration::from_millis(10), Duration::from_micros(100));
        w2[0].complete(Duration::from_millis(5), Duration::from_micros(300));
        w1[1].fail(Duration::from_millis(100));
        w2[1].fail(Duration::from_millis(2000));
        w1[2].complete(Duration::from_millis(700), Duration::from_micros(200));
        w2[2].fail(Duration::from_millis(50));
        w2[2].handshake(HandshakeKind::Resumed, Duration::from_micros(400));
        for (a, b) in w1.iter_mut().zip(&w2) {
            a.merge(b);
        }
        let r = reports(&b, &w1, Duration::from_secs(9), true);
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].from_s, r[0].to_s, r[2].from_s, r[2].to_s), (0.0, 3.0, 6.0, 9.0));
        assert_eq!(
            (r[0].completed, r[0].failed, r[0].first_completed_s),
            (2, 0, Some(0.005))
        );
        assert!((r[0].rate - 2.0 / 3.0).abs() < 0.001);
        assert_eq!((r[1].completed, r[1].failed, r[1].last_failed_s), (0, 2, Some(2.0)));
        assert_eq!(r[1].first_completed_s, None);
        assert!(r[1].histogram_us.response.is_empty());
        assert_eq!((r[2].completed, r[2].failed, r[2].first_completed_s), (1, 1, Some(0.7)));
        assert_eq!(r[2].handshakes.as_ref().map(|h| h.resumed), Some(1));
        let q = &r[0].histogram_us.response;
        assert_eq!(q.len(), HISTOGRAM_QUANTILES.len());
        assert_eq!(q.last().map(|&(q, _)| q), Some(1.0));
        assert!(q.windows(2).all(|w| w[0].1 <= w[1].1), "{q:?}");
        assert!(reports(&b, &w1, Duration::from_secs(9), false)[2].handshakes.is_none());
        // Per phase: the counts, the handshakes and their latency, the response latency.
        assert_eq!(human(&r).len(), 12);
    }
}
