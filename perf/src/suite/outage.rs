//! `tls_keyserver_outage`: the Key Server killed and restarted under load (see
//! [`Scenario::TlsKeyserverOutage`]). The three loads of [`scenarios::outage_loads`] start side by side on the
//! generator core; [`OUTAGE_KILL_S`] s later the Key Server gets SIGKILL, at [`OUTAGE_RESTART_S`] s it is started
//! again; each load splits its report at those two offsets (`--phases`). Phase boundaries are the generators'
//! own clocks, started a few milliseconds after the suite's: a phase begins that much after the event.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::cpu::{CpuSample, CpuUsage};
use super::lab::{GeneratorRun, SuiteLab};
use super::scenarios::{self, Scenario, OUTAGE_KILL_S, OUTAGE_RESTART_S, OUTAGE_SECONDS};
use super::systems::RunningSystem;

/// Names of the phases, in order.
pub const PHASES: [&str; 3] = ["before", "down", "after"];

/// Runs the scenario against `system` (xlb with a Key Server).
pub fn run(lab: &SuiteLab, system: &RunningSystem) -> Result<GeneratorRun> {
    let ks = system
        .key_server()
        .context("the outage scenario needs xlb with a Key Server")?;
    let xlb_pid = system.pid().context("xlb without a process")?;
    let loads = scenarios::outage_loads();
    let sinks = lab.sink_pids();
    let before = CpuSample::take(&[xlb_pid], &sinks)?;
    let started = Instant::now();
    let mut procs = Vec::new();
    for (name, args) in &loads {
        match lab.start_background(args) {
            Ok(p) => procs.push((*name, p)),
            Err(e) => return Err(e.context(format!("starting the {name} load"))),
        }
    }
    let events = (|| -> Result<Value> {
        sleep_until(started + Duration::from_secs(OUTAGE_KILL_S));
        let killed_at = started.elapsed();
        ks.kill()?;
        super::progress(&format!(
            "  {}: Key Server killed (SIGKILL) at {:.3} s",
            Scenario::TlsKeyserverOutage.name(),
            killed_at.as_secs_f64()
        ));
        sleep_until(started + Duration::from_secs(OUTAGE_RESTART_S));
        let restart_at = started.elapsed();
        let took = ks.restart(lab)?;
        super::progress(&format!(
            "  {}: Key Server restarted at {:.3} s, its socket back after {:.1} ms",
            Scenario::TlsKeyserverOutage.name(),
            restart_at.as_secs_f64(),
            took.as_secs_f64() * 1e3
        ));
        Ok(json!({
            "killed_at_s": killed_at.as_secs_f64(),
            "restarted_at_s": restart_at.as_secs_f64(),
            "restart_ms": took.as_secs_f64() * 1e3,
        }))
    })();
    // The loads end on their own (bounded by their duration); reap them also when an event failed.
    let mut report = serde_json::Map::new();
    let mut cmdlines = Vec::new();
    let mut first_err = None;
    for (name, proc) in procs {
        cmdlines.push(proc.cmdline().to_owned());
        match lab.finish_background(proc, Duration::from_secs(OUTAGE_SECONDS)) {
            Ok(r) => {
                report.insert(name.to_owned(), r);
            }
            Err(e) => {
                first_err.get_or_insert(e.context(format!("the {name} load")));
            }
        }
    }
    let after = CpuSample::take(&[xlb_pid], &sinks)?;
    report.insert("key_server".into(), events?);
    if let Some(e) = first_err {
        return Err(e);
    }
    let report = Value::Object(report);
    for line in summary(&report) {
        super::progress(&line);
    }
    Ok(GeneratorRun {
        cmdline: cmdlines.join("  &  "),
        report,
        cpu: CpuUsage::between(&before, &after),
    })
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// Lines per load and phase: counts, rate, percentiles and the histogram (quantile: µs).
pub fn summary(report: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (load, hist) in [
        ("resumed", "handshake"),
        ("keepalive", "response"),
        ("probe", "handshake"),
    ] {
        let Some(phases) = report.pointer(&format!("/{load}/phases")).and_then(Value::as_array) else {
            continue;
        };
        for (name, p) in PHASES.iter().zip(phases) {
            let n = |k: &str| p.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            let lat = |q: &str| {
                p.pointer(&format!("/latency_us/{hist}/{q}"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            };
            let histogram: Vec<String> = p
                .pointer(&format!("/histogram_us/{hist}"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|pair| {
                            let q = pair.get(0)?.as_f64()?;
                            let v = pair.get(1)?.as_u64()?;
                            Some(format!("{}%:{v}", (q * 100_000.0).round() / 1000.0))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let first = p
                .get("first_completed_s")
                .and_then(Value::as_f64)
                .map_or_else(String::new, |s| format!(", first ok after {:.0} ms", s * 1e3));
            out.push(format!(
                "  outage {load:<9} {name:<6}: {:.0} ok ({:.0}/s), {:.0} failed{first}; {hist} p50 {} p99 {} µs; \
                 histogram µs [{}]",
                n("completed"),
                n("rate"),
                n("failed"),
                lat("p50"),
                lat("p99"),
                histogram.join(" ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines_per_load_and_phase() {
        let phase = |ok: u64, failed: u64| {
            json!({"completed": ok, "failed": failed, "rate": ok as f64 / 3.0, "first_completed_s": 0.25,
                   "latency_us": {"handshake": {"p50": 300, "p99": 900}, "response": {"p50": 100, "p99": 200}},
                   "histogram_us": {"handshake": [[0.5, 300], [0.99999, 1900], [1.0, 2000]], "response": [[0.5, 100]]}})
        };
        let report = json!({
            "resumed": {"phases": [phase(30, 0), phase(30, 0), phase(30, 0)]},
            "keepalive": {"phases": [phase(90, 0), phase(90, 0), phase(90, 0)]},
            "probe": {"phases": [phase(30, 0), phase(0, 30), phase(28, 0)]},
        });
        let lines = summary(&report);
        assert_eq!(lines.len(), 9, "{lines:#?}");
        assert!(lines[0].contains("resumed") && lines[0].contains("before") && lines[0].contains("p99 900"));
        assert!(lines[0].contains("[50%:300 99.999%:1900 100%:2000]"), "{}", lines[0]);
        assert!(
            lines[3].contains("keepalive") && lines[3].contains("p50 100"),
            "{}",
            lines[3]
        );
        assert!(
            lines[7].contains("0 ok") && lines[7].contains("30 failed"),
            "{}",
            lines[7]
        );
        assert!(lines[8].contains("first ok after 250 ms"), "{}", lines[8]);
        assert!(summary(&json!({})).is_empty());
    }

    #[test]
    fn phases_match_the_loads() {
        let loads = scenarios::outage_loads();
        let names: Vec<&str> = loads.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["resumed", "keepalive", "probe"]);
        for (_, args) in &loads {
            let joined = args.join(" ");
            assert!(
                joined.ends_with(&format!(
                    "--phases {OUTAGE_KILL_S},{OUTAGE_RESTART_S} --duration {OUTAGE_SECONDS}"
                )),
                "{joined}"
            );
        }
        assert!(loads[0].1.join(" ").contains("--new-conn --connections 4 --tls"));
        assert!(loads[0].1.contains(&"--resume".to_owned()));
        assert!(loads[1].1.join(" ").contains(":8080 --keepalive"));
        assert!(loads[2].1.join(" ").contains("--connections 1 --rate 10"));
        assert!(!loads[2].1.contains(&"--resume".to_owned()));
        assert_eq!(PHASES.len(), 3);
    }
}
