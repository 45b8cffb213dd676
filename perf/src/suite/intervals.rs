//! Scenarios measured as back-to-back generator runs of a fixed length (intervals), so a rate that changes
//! during the run shows up as a series: one generator report per interval, combined into one report.

use serde_json::{json, Map, Value};

use super::lab::{TimeWait, TimeWaitCleared};

/// One interval: the generator's report, its wall-clock time and the TIME_WAIT sockets after it.
#[derive(Debug, Clone)]
pub struct Interval {
    /// The generator's raw JSON report.
    pub report: Value,
    /// Wall-clock seconds of the generator run (start to exit, so in-flight requests included).
    pub wall_s: f64,
    /// TIME_WAIT sockets in the servers' and client's namespaces when the interval ended.
    pub time_wait: TimeWait,
}

fn count(report: &Value, key: &str) -> u64 {
    report
        .pointer(&format!("/counts/{key}"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// The connect-latency p99 of a generator report in µs (0 if it has none, e.g. no connection completed).
fn connect_p99(report: &Value) -> f64 {
    report
        .pointer("/latency_us/connect/p99")
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
}

fn rate(completed: u64, wall_s: f64) -> f64 {
    if wall_s > 0.0 {
        round1(completed as f64 / wall_s)
    } else {
        0.0
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Completed operations per second of every interval, in order (from a combined report).
pub fn interval_rates(combined: &Value) -> Vec<f64> {
    combined["intervals"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["rate"].as_f64()).collect())
        .unwrap_or_default()
}

/// The combined report: per interval its rate (completed / wall-clock seconds), counts, failures, connect p99
/// and the TIME_WAIT sockets after it; in total the counts, the overall rate (all completed / all wall-clock
/// seconds), the first, last and slowest interval's rate, `last_vs_first` (0 if the first interval completed
/// nothing), the last interval's connect p99, the answers per server and every raw report.
pub fn combine(scenario: &str, interval_s: f64, cleared: &TimeWaitCleared, intervals: &[Interval]) -> Value {
    let mut rows = Vec::new();
    let (mut completed, mut failed, mut issued, mut wall) = (0u64, 0u64, 0u64, 0.0f64);
    let mut servers = Map::new();
    for (i, it) in intervals.iter().enumerate() {
        let (c, f) = (count(&it.report, "completed"), count(&it.report, "failed"));
        completed += c;
        failed += f;
        issued += count(&it.report, "issued");
        wall += it.wall_s;
        if let Some(per_server) = it.report["servers"].as_object() {
            for (name, n) in per_server {
                let sum = servers.get(name).and_then(Value::as_u64).unwrap_or(0) + n.as_u64().unwrap_or(0);
                servers.insert(name.clone(), sum.into());
            }
        }
        rows.push(json!({
            "index": i,
            "rate": rate(c, it.wall_s),
            "completed": c,
            "failed": f,
            "connect_p99_us": connect_p99(&it.report),
            "failures": it.report["failures"],
            "wall_s": (it.wall_s * 1000.0).round() / 1000.0,
            "time_wait_after": it.time_wait,
        }));
    }
    let rates: Vec<f64> = rows.iter().filter_map(|r| r["rate"].as_f64()).collect();
    let first = rates.first().copied().unwrap_or(0.0);
    let last = rates.last().copied().unwrap_or(0.0);
    let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
    json!({
        "scenario": scenario,
        "interval_s": interval_s,
        "time_wait_cleared_before": cleared,
        "rate": rate(completed, wall),
        "elapsed_s": (wall * 1000.0).round() / 1000.0,
        "counts": {"issued": issued, "completed": completed, "failed": failed},
        "first_interval_rate": first,
        "last_interval_rate": last,
        "min_interval_rate": if min.is_finite() { min } else { 0.0 },
        "last_vs_first": if first > 0.0 { (last / first * 1000.0).round() / 1000.0 } else { 0.0 },
        "last_interval_connect_p99_us": intervals.last().map_or(0.0, |i| connect_p99(&i.report)),
        "intervals": rows,
        "servers": servers,
        "reports": intervals.iter().map(|i| i.report.clone()).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(completed: u64, failed: u64, wall_s: f64, tw: u64) -> Interval {
        Interval {
            report: json!({"counts": {"issued": completed + failed, "completed": completed, "failed": failed},
                           "latency_us": {"connect": {"p99": wall_s * 100.0}},
                           "failures": {"timeout": failed}, "servers": {"s1": completed / 2, "s2": completed - completed / 2}}),
            wall_s,
            time_wait: TimeWait { servers: tw, client: 0 },
        }
    }

    #[test]
    fn series_and_summary() {
        let cleared = TimeWaitCleared {
            found: TimeWait::default(),
            how: "none left",
        };
        let c = combine(
            "x",
            10.0,
            &cleared,
            &[
                interval(50_000, 0, 10.0, 50_000),
                interval(370, 16, 10.0, 50_370),
                interval(2_000, 3, 8.0, 52_370),
            ],
        );
        assert_eq!(interval_rates(&c), [5000.0, 37.0, 250.0]);
        assert_eq!(c["counts"]["completed"], 52_370);
        assert_eq!(c["counts"]["failed"], 19);
        assert_eq!(c["counts"]["issued"], 52_389);
        assert_eq!(c["rate"], 1870.4); // 52 370 / 28 s
        assert_eq!(
            (c["first_interval_rate"].as_f64(), c["last_interval_rate"].as_f64()),
            (Some(5000.0), Some(250.0))
        );
        assert_eq!(c["min_interval_rate"], 37.0);
        assert_eq!(c["last_vs_first"], 0.05);
        assert_eq!(c["intervals"][1]["connect_p99_us"], 1000.0);
        assert_eq!(c["last_interval_connect_p99_us"], 800.0);
        assert_eq!(c["servers"]["s1"], 25_000 + 185 + 1_000);
        assert_eq!(c["intervals"][2]["time_wait_after"]["servers"], 52_370);
        assert_eq!(c["reports"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn a_dead_first_interval_gives_zero_not_infinity() {
        let cleared = TimeWaitCleared {
            found: TimeWait::default(),
            how: "none left",
        };
        let c = combine("x", 5.0, &cleared, &[interval(0, 4, 5.0, 0), interval(10, 0, 5.0, 10)]);
        assert_eq!(c["last_vs_first"], 0.0);
        assert_eq!(c["min_interval_rate"], 0.0);
        let empty = combine("x", 5.0, &cleared, &[]);
        assert_eq!(
            (empty["rate"].as_f64(), empty["min_interval_rate"].as_f64()),
            (Some(0.0), Some(0.0))
        );
        assert_eq!(empty["last_interval_connect_p99_us"], 0.0);
    }
}
