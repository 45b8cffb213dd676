//! `h2load` (nghttp2-client) as the generator of the HTTP/2 row: its text summary and per-request log turned into
//! a JSON report shaped like `xlb-bench`'s (`/rate`, `/counts/...`, `/latency_us/...`), so the scenario's metrics
//! are taken the same way as the other rows'.
//!
//! The summary h2load prints (nghttp2 1.52):
//!
//! ```text
//! finished in 3.00s, 20022.67 req/s, 704.33KB/s
//! requests: 60068 total, 60324 started, 60068 done, 60068 succeeded, 0 failed, 0 errored, 0 timeout
//! status codes: 60068 2xx, 0 3xx, 0 4xx, 0 5xx
//! traffic: ...
//!                      min         max         mean         sd        +/- sd
//! time for request:     3.65ms     77.98ms     12.58ms      4.90ms    92.61%
//! ```
//!
//! `--log-file` writes one line per finished request: start time (µs since the epoch), status, µs until the end
//! of the response; the percentiles come from there.

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

/// Which program a scenario's generator is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    /// `xlb-bench ARGS --json` (the workspace's own generator).
    XlbBench,
    /// `h2load ARGS --log-file FILE`, its summary parsed by [`report`].
    H2load,
}

/// A duration as h2load prints it (`289us`, `18.58ms`, `1.02s`), in µs.
fn duration_us(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|v| v * factor)
}

/// The numbers of a `label: N word, N word, ...` line as `(word, N)` pairs (`requests: 5 total, 4 done` gives
/// `[("total", 5), ("done", 4)]`).
fn counted(rest: &str) -> Vec<(String, f64)> {
    rest.split(',')
        .filter_map(|part| {
            let mut words = part.split_whitespace();
            let n = words.next()?.parse::<f64>().ok()?;
            Some((words.next()?.to_owned(), n))
        })
        .collect()
}

/// The summary's numbers: rate, request counts, status classes and request times.
pub fn parse_summary(stdout: &str) -> Result<Value> {
    let mut rate = None;
    let mut finished_s = None;
    let mut counts = Map::new();
    let mut status = Map::new();
    let mut request = Map::new();
    for line in stdout.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("finished in ") {
            // "3.00s, 20022.67 req/s, 704.33KB/s"
            let mut parts = rest.split(',').map(str::trim);
            finished_s = parts.next().and_then(duration_us).map(|us| us / 1e6);
            rate = parts
                .next()
                .and_then(|p| p.strip_suffix("req/s"))
                .and_then(|n| n.trim().parse::<f64>().ok());
        } else if let Some(rest) = line.strip_prefix("requests:") {
            for (word, n) in counted(rest) {
                counts.insert(word, json!(n));
            }
        } else if let Some(rest) = line.strip_prefix("status codes:") {
            for (word, n) in counted(rest) {
                status.insert(word, json!(n));
            }
        } else if let Some(rest) = line.strip_prefix("time for request:") {
            let values: Vec<f64> = rest.split_whitespace().take(4).filter_map(duration_us).collect();
            if let [min, max, mean, sd] = values[..] {
                for (k, v) in [("min", min), ("max", max), ("mean", mean), ("sd", sd)] {
                    request.insert(k.into(), json!(v));
                }
            }
        }
    }
    let (Some(rate), Some(finished_s)) = (rate, finished_s) else {
        bail!("no `finished in Xs, Y req/s` line in h2load's output:\n{stdout}");
    };
    for key in ["total", "started", "done", "succeeded", "failed", "errored", "timeout"] {
        if !counts.contains_key(key) {
            bail!("no `{key}` count on h2load's `requests:` line:\n{stdout}");
        }
    }
    if request.len() != 4 {
        bail!("no `time for request:` min/max/mean/sd in h2load's output:\n{stdout}");
    }
    let number = |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    // Answers outside 2xx (h2load only counts classes); no status line at all means none were counted.
    let done = number(&counts, "done");
    counts.insert("completed".into(), json!(done));
    counts.insert("non_2xx".into(), json!((done - number(&status, "2xx")).max(0.0)));
    Ok(json!({
        "generator": "h2load",
        "rate": rate,
        "finished_s": finished_s,
        "counts": counts,
        "status": status,
        "latency_us": {"request": request},
    }))
}

/// Nearest-rank percentiles (p50, p99, p99.9) and the count of the per-request times in an h2load log.
pub fn log_percentiles(log: &str) -> Result<Value> {
    let mut times: Vec<f64> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split('\t')
                .nth(2)
                .and_then(|t| t.trim().parse::<f64>().ok())
                .with_context(|| format!("bad h2load log line {l:?}"))
        })
        .collect::<Result<_>>()?;
    times.sort_by(f64::total_cmp);
    let at = |q: f64| -> f64 {
        if times.is_empty() {
            return 0.0;
        }
        let rank = (q * times.len() as f64).ceil() as usize;
        times[rank.clamp(1, times.len()) - 1]
    };
    Ok(json!({"count": times.len(), "p50": at(0.50), "p99": at(0.99), "p99_9": at(0.999)}))
}

/// The run's report: the summary's numbers with the log's percentiles under `/latency_us/request` and the
/// summary lines themselves under `summary`.
pub fn report(stdout: &str, log: &str) -> Result<Value> {
    let mut report = parse_summary(stdout)?;
    let percentiles = log_percentiles(log)?;
    if let Some(request) = report.pointer_mut("/latency_us/request").and_then(Value::as_object_mut) {
        for key in ["p50", "p99", "p99_9"] {
            request.insert(key.into(), percentiles[key].clone());
        }
        request.insert("logged".into(), percentiles["count"].clone());
    }
    let summary: Vec<&str> = stdout.lines().skip_while(|l| !l.starts_with("finished in ")).collect();
    report["summary"] = json!(summary);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// h2load 1.52's summary as printed through xlb's h2c listener in the suite's lab (`--quick`, 2026-11-30),
    /// after the kind of progress lines it prints first.
    const SAMPLE: &str = "starting benchmark...
spawning thread #0: 16 total client(s). Timing-based test with 0s of warm-up time and 3s of main duration for measurements.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 3.00s, 20022.67 req/s, 704.33KB/s
requests: 60068 total, 60324 started, 60068 done, 60068 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 60068 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 2.06MB (2163712) total, 469.66KB (480928) headers (space savings 86.20%), 586.60KB (600680) data
                     min         max         mean         sd        +/- sd
time for request:     3.65ms     77.98ms     12.58ms      4.90ms    92.61%
time for connect:       61us       340us       205us        86us    62.50%
time to 1st byte:     7.57ms     40.21ms     30.25ms      8.05ms    75.00%
req/s           :    1237.70     1262.11     1251.15        5.63    81.25%
";

    #[test]
    fn summary_numbers() {
        let r = parse_summary(SAMPLE).unwrap();
        assert_eq!(r["rate"], 20022.67);
        assert_eq!(r["finished_s"], 3.0);
        assert_eq!(r["counts"]["total"], 60068.0);
        // The streams still open when the duration ended were started, not done, and not failed.
        assert_eq!(r["counts"]["started"], 60324.0);
        assert_eq!(r["counts"]["succeeded"], 60068.0);
        assert_eq!(r["counts"]["failed"], 0.0);
        assert_eq!(r["counts"]["timeout"], 0.0);
        assert_eq!(r["counts"]["completed"], 60068.0);
        assert_eq!(r["counts"]["non_2xx"], 0.0);
        let req = &r["latency_us"]["request"];
        assert_eq!(req["min"], 3650.0);
        assert_eq!(req["max"], 77980.0);
        assert_eq!(req["mean"], 12580.0);
        assert_eq!(req["sd"], 4900.0);
        // Failures and answers outside 2xx (the same summary, edited).
        let failing = SAMPLE
            .replace(
                "60068 succeeded, 0 failed, 0 errored",
                "60058 succeeded, 10 failed, 10 errored",
            )
            .replace("60068 2xx, 0 3xx, 0 4xx, 0 5xx", "60055 2xx, 0 3xx, 0 4xx, 3 5xx")
            .replace("   3.65ms ", "     289us ");
        let r = parse_summary(&failing).unwrap();
        assert_eq!(
            (r["counts"]["failed"].as_f64(), r["counts"]["errored"].as_f64()),
            (Some(10.0), Some(10.0))
        );
        assert_eq!(
            (r["counts"]["non_2xx"].as_f64(), r["status"]["5xx"].as_f64()),
            (Some(13.0), Some(3.0))
        );
        assert_eq!(r["latency_us"]["request"]["min"], 289.0);
    }

    #[test]
    fn units_and_broken_output() {
        assert_eq!(duration_us("1.50s"), Some(1_500_000.0));
        assert_eq!(duration_us("0us"), Some(0.0));
        assert_eq!(duration_us("12"), None);
        assert!(parse_summary("").is_err());
        // Cut off after the first line: the counts are missing.
        let cut: String = SAMPLE
            .lines()
            .take_while(|l| !l.starts_with("requests:"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(cut.contains("finished in"));
        assert!(parse_summary(&cut).unwrap_err().to_string().contains("`total`"));
        let no_times = SAMPLE.replace("time for request:", "time for nothing:");
        assert!(parse_summary(&no_times).is_err());
    }

    #[test]
    fn percentiles_from_the_log() {
        let log: String = (1..=1000).map(|i| format!("1700000000{i:06}\t200\t{i}\n")).collect();
        let p = log_percentiles(&log).unwrap();
        assert_eq!((p["count"].as_u64(), p["p50"].as_f64()), (Some(1000), Some(500.0)));
        assert_eq!((p["p99"].as_f64(), p["p99_9"].as_f64()), (Some(990.0), Some(999.0)));
        assert_eq!(log_percentiles("").unwrap()["p99"], 0.0);
        assert!(log_percentiles("1\t200\n").is_err());
        let r = report(SAMPLE, &log).unwrap();
        assert_eq!(r.pointer("/latency_us/request/p99"), Some(&json!(990.0)));
        assert_eq!(r.pointer("/latency_us/request/mean"), Some(&json!(12580.0)));
        assert!(r["summary"][0].as_str().unwrap().starts_with("finished in 3.00s"));
    }
}
