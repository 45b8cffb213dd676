//! Load generators and the backend they run against.
//!
//! - [`tcp`]: TCP connection rate (`tcp-cps`), optionally with one
//!   request/response per connection;
//! - [`udp`]: UDP request/response with loss accounting (`udp --mode rr`)
//!   and one-way blasting (`udp --mode blast`);
//! - [`http`]: HTTP/1.1 GET load, closed loop or open loop at a fixed rate;
//! - [`sink`]: the backend server (TCP echo, UDP echo, HTTP) whose answers
//!   name it, so generators can report which server answered;
//! - [`synflood`]: a spoofed-source SYN flood written with an AF_PACKET socket (`syn-flood`);
//! - [`report`]: latency percentiles, failure counts and output.
//!
//! Every generator is bounded: it stops taking new operations after its
//! duration (or its operation count), and every operation has a timeout. In
//! open-loop mode the generator follows a fixed schedule of `rate × duration`
//! operations and measures latency from each operation's *intended* start, so
//! a stalled server cannot hide its stall by slowing the generator down
//! (coordinated omission).

pub mod http;
pub mod report;
pub mod sink;
pub mod synflood;
pub mod tcp;
pub mod tls;
pub mod udp;

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Flag asking a running generator or sink to stop early, e.g. set from a
/// SIGINT handler. Generators still report what they did until then.
pub type StopFlag = Arc<AtomicBool>;

/// Longest a generator sleeps before looking at its [`StopFlag`] again.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Bounds common to every load generator.
#[derive(Debug, Clone)]
pub struct RunLimits {
    /// How long to generate load; no operation starts after it (in open-loop
    /// mode: none is scheduled after it).
    pub duration: Duration,
    /// Stop after this many operations even if time is left.
    pub count: Option<u64>,
    /// Timeout of one step of an operation (connect, send, response).
    pub timeout: Duration,
}

/// One operation handed out by a [`Pacer`].
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// Position of the operation in the run, from 0.
    pub index: u64,
    /// In open-loop mode, when the operation should start.
    pub intended: Option<Instant>,
}

/// Hands out operations to the worker threads of one run.
///
/// Closed loop (no rate): workers take operations as fast as they finish
/// them, until the duration is over or the count is reached. Open loop (with
/// a rate): operation `i` is due at `start + i / rate`, for
/// `round(rate × duration)` operations (or fewer, with a count); a worker that
/// runs late starts due operations at once, and gives up on any it takes
/// later than one timeout after the end of the duration.
#[derive(Debug)]
pub struct Pacer {
    start: Instant,
    end: Instant,
    hard_end: Instant,
    rate: Option<f64>,
    total: u64,
    next: AtomicU64,
    stop: StopFlag,
}

impl Pacer {
    /// Starts a run now.
    pub fn new(limits: &RunLimits, rate: Option<f64>, stop: StopFlag) -> Pacer {
        let start = Instant::now();
        let end = start + limits.duration;
        let count = limits.count.unwrap_or(u64::MAX);
        let (total, hard_end) = match rate {
            None => (count, end),
            Some(rate) => {
                // Truncation is intended: a count of operations.
                let scheduled = (rate * limits.duration.as_secs_f64()).round() as u64;
                (scheduled.min(count), end + limits.timeout)
            }
        };
        Pacer {
            start,
            end,
            hard_end,
            rate,
            total,
            next: AtomicU64::new(0),
            stop,
        }
    }

    /// When the run started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// In open-loop mode, the number of operations on the schedule.
    pub fn scheduled(&self) -> Option<u64> {
        self.rate.map(|_| self.total)
    }

    /// Whether a stop was requested.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The next operation, or `None` when the run is over.
    pub fn take(&self) -> Option<Slot> {
        if self.stopped() {
            return None;
        }
        let now = Instant::now();
        match self.rate {
            None if now >= self.end => None,
            Some(_) if now >= self.hard_end => None,
            _ => {
                let index = self.next.fetch_add(1, Ordering::Relaxed);
                if index >= self.total {
                    return None;
                }
                let intended = self
                    .rate
                    .map(|rate| self.start + nanos((index as f64 * 1e9 / rate).round()));
                Some(Slot { index, intended })
            }
        }
    }

    /// Sleeps until `at`; returns false (early) if a stop was requested.
    pub fn wait_until(&self, at: Instant) -> bool {
        loop {
            if self.stopped() {
                return false;
            }
            let now = Instant::now();
            if now >= at {
                return true;
            }
            thread::sleep((at - now).min(STOP_CHECK));
        }
    }

    /// The deadline after which nothing new may start, even late.
    pub fn hard_end(&self) -> Instant {
        self.hard_end
    }
}

/// Converts a non-negative number of nanoseconds to a duration.
fn nanos(ns: f64) -> Duration {
    // Saturating float-to-int conversion; schedules stay far below u64::MAX ns.
    Duration::from_nanos(ns as u64)
}

/// Counters read by the live [`Progress`] line.
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// Operations that succeeded.
    pub ok: AtomicU64,
    /// Operations that failed.
    pub failed: AtomicU64,
}

impl LiveCounters {
    /// Counts a success.
    pub fn ok(&self) {
        self.ok.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failure.
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// A once-per-second progress line on stderr, only if stderr is a terminal.
///
/// Stops (and ends the line) when dropped.
#[derive(Debug)]
pub struct Progress {
    done: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts showing `label`, the rate of `counters.ok`, the failures and
    /// the elapsed time out of `total`.
    pub fn start(label: &str, total: Duration, counters: Arc<LiveCounters>) -> Progress {
        let done = Arc::new(AtomicBool::new(false));
        let handle = io::stderr().is_terminal().then(|| {
            let (label, done) = (label.to_owned(), Arc::clone(&done));
            thread::spawn(move || show_progress(&label, total, &counters, &done))
        });
        Progress { done, handle }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn show_progress(label: &str, total: Duration, counters: &LiveCounters, done: &AtomicBool) {
    let start = Instant::now();
    let mut last = (start, 0u64);
    let mut next_tick = start + Duration::from_secs(1);
    let mut shown = false;
    while !done.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next_tick {
            thread::sleep((next_tick - now).min(STOP_CHECK));
            continue;
        }
        next_tick += Duration::from_secs(1);
        let ok = counters.ok.load(Ordering::Relaxed);
        let failed = counters.failed.load(Ordering::Relaxed);
        let rate = (ok - last.1) as f64 / (now - last.0).as_secs_f64();
        last = (now, ok);
        let mut err = io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[K{label}: {rate:.0}/s ok={ok} errors={failed} {:.0}/{:.0} s",
            (now - start).as_secs_f64(),
            total.as_secs_f64()
        );
        let _ = err.flush();
        shown = true;
    }
    if shown {
        eprintln!();
    }
}

/// Waits until `fd` is readable or `timeout` passes (microsecond precision);
/// returns whether it is readable. An interrupted wait counts as a timeout.
pub(crate) fn wait_readable(fd: std::os::fd::RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        // Always below one billion, so it fits every `c_long`.
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `pfd` and `ts` are valid for the call; one descriptor is passed;
    // a null signal mask leaves the mask unchanged.
    let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(err);
    }
    Ok(n > 0)
}

/// Parses a rate: a positive number, or `unlimited` (`None`).
pub fn parse_rate(text: &str) -> Result<Option<f64>, String> {
    if text.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(Some(rate)),
        _ => Err(format!("`{text}` is not a rate: use a positive number or `unlimited`")),
    }
}

/// The server name in an answer whose first line is `server=NAME`.
pub fn server_name(answer: &[u8]) -> Option<String> {
    let line = answer.split(|&b| b == b'\n').next()?;
    let name = line.strip_prefix(b"server=")?;
    let name = name.strip_suffix(b"\r").unwrap_or(name);
    let name = std::str::from_utf8(name).ok()?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// Longest server name a sink accepts (it must fit the UDP reply field).
pub const MAX_SERVER_NAME: usize = 32;

/// Checks a sink name: 1 to [`MAX_SERVER_NAME`] ASCII letters, digits, `.`,
/// `_`, `-` or `:`, so it fits in a header, a line and a UDP reply.
pub fn check_server_name(name: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "._-:".contains(c);
    if name.is_empty() || name.len() > MAX_SERVER_NAME || !name.chars().all(ok) {
        return Err(format!(
            "invalid server name `{name}`: 1 to {MAX_SERVER_NAME} ASCII letters, digits, `.`, `_`, `-` or `:`"
        ));
    }
    Ok(())
}

/// Checks and converts a duration given in seconds.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= 86_400.0 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!(
            "`{text}` is not a duration: use seconds, more than 0 and at most 86400"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(duration_ms: u64, count: Option<u64>) -> RunLimits {
        RunLimits {
            duration: Duration::from_millis(duration_ms),
            count,
            timeout: Duration::from_millis(100),
        }
    }

    #[test]
    fn open_loop_schedule_is_fixed() {
        let stop = StopFlag::default();
        let pacer = Pacer::new(&limits(2000, None), Some(100.0), stop);
        assert_eq!(pacer.scheduled(), Some(200));
        let slots: Vec<Slot> = std::iter::from_fn(|| pacer.take()).collect();
        assert_eq!(slots.len(), 200);
        let last = slots[199].intended.unwrap() - pacer.start();
        assert_eq!(last, Duration::from_millis(1990));
    }

    #[test]
    fn count_bounds_both_modes() {
        let pacer = Pacer::new(&limits(60_000, Some(7)), None, StopFlag::default());
        assert_eq!(std::iter::from_fn(|| pacer.take()).count(), 7);
        let pacer = Pacer::new(&limits(60_000, Some(7)), Some(1e6), StopFlag::default());
        assert_eq!(pacer.scheduled(), Some(7));
    }

    #[test]
    fn stop_flag_ends_run() {
        let stop = StopFlag::default();
        let pacer = Pacer::new(&limits(60_000, None), None, Arc::clone(&stop));
        assert!(pacer.take().is_some());
        stop.store(true, Ordering::Relaxed);
        assert!(pacer.take().is_none());
        assert!(!pacer.wait_until(Instant::now() + Duration::from_secs(60)));
    }

    #[test]
    fn parsing() {
        assert_eq!(parse_rate("unlimited"), Ok(None));
        assert_eq!(parse_rate("250.5"), Ok(Some(250.5)));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-3").is_err());
        assert_eq!(server_name(b"server=s1\nrest"), Some("s1".to_owned()));
        assert_eq!(server_name(b"server=s1\r\n"), Some("s1".to_owned()));
        assert_eq!(server_name(b"hello"), None);
        assert!(check_server_name("198.18.0.2:80").is_ok());
        assert!(check_server_name("a b").is_err());
        assert!(check_server_name(&"x".repeat(33)).is_err());
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("0").is_err());
    }
}
