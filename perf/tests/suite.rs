//! `xlb-suite --quick` end to end: a real xlb (also with its keys on `xlb-keyserver`), the kernel NAT peer and the
//! NGINX and HAProxy proxies in a netns lab.
//!
//! Checks that every scenario ran through the systems of its layer and produced numbers, and that the results file and
//! plots are written and parse — never that anything is fast. Needs root and the workspace binaries (`xlb`,
//! `xlbctl`, `xlb-bench`, `xlb-keyserver`; `make test` builds them first). Takes a few minutes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use xlb_tests::lab::{require_root, workspace_bin};

/// Upper bound for the whole quick run (it normally takes three to five minutes).
const SUITE_TIMEOUT: Duration = Duration::from_secs(720);

/// The systems of the L4, L7 and HTTPS scenarios.
const L4: &[&str] = &["xlb", "kernel"];
const L7: &[&str] = &["xlb", "nginx", "haproxy"];
const HTTPS_KS: &[&str] = &["xlb", "nginx", "haproxy", "xlb-ks"];
const KS: &[&str] = &["xlb-ks"];

/// Scenario names, the headline metric of each, as in the results file, and the systems it runs on.
const SCENARIOS: [(&str, &str, &[&str]); 16] = [
    ("tcp_cps", "conns_per_s", L4),
    ("udp_pps_64", "pps", L4),
    ("latency", "p99_us", L4),
    ("tcp_connect_latency", "connect_p50_us", L4),
    ("tcp_cps_server_close", "conns_per_s", L4),
    ("tcp_cps_synflood", "flood_sps", L4),
    ("http_rps_keepalive", "rps", L7),
    ("http_cps", "conns_per_s", L7),
    ("http_connect_latency", "connect_p50_us", L7),
    ("http2_rps", "rps", L7),
    ("tls_idle_memory", "bytes_per_conn", L7),
    ("https_rps_keepalive", "rps", L7),
    ("tls_handshakes_ecdsa", "handshakes_per_s", HTTPS_KS),
    ("tls_handshakes_rsa", "handshakes_per_s", HTTPS_KS),
    ("tls_resumed", "handshakes_per_s", HTTPS_KS),
    ("tls_keyserver_outage", "resumed_down_per_s", KS),
];

/// Intervals of `tcp_cps_server_close` in quick mode.
const QUICK_INTERVALS: usize = 2;

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `program args`, killing it after `timeout`; returns (success, stdout, stderr).
fn run_bounded(program: &str, args: &[&str], timeout: Duration) -> Result<(bool, String, String)> {
    let dir = TempDir::new("xlb-suite-test-logs")?;
    let (out_path, err_path) = (dir.0.join("stdout"), dir.0.join("stderr"));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > timeout {
            // SIGTERM first: the suite then tears its lab down.
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(10));
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{program} did not finish within {timeout:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Ok((
        status.success(),
        std::fs::read_to_string(&out_path)?,
        std::fs::read_to_string(&err_path)?,
    ))
}

/// The single file in `dir` whose name ends with `suffix`.
fn one_file(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(suffix))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("expected one *{suffix} in {}, found {found:?}", dir.display()),
    }
}

#[test]
fn quick_suite_measures_every_scenario_on_the_systems_of_its_layer() -> Result<()> {
    require_root()?;
    for bin in ["xlb", "xlbctl", "xlb-bench", "xlb-keyserver"] {
        workspace_bin(bin)?;
    }
    let out = TempDir::new("xlb-suite-test-out")?;
    let out_dir = out.0.display().to_string();
    let (ok, stdout, stderr) = run_bounded(
        env!("CARGO_BIN_EXE_xlb-suite"),
        &["--quick", "--reps", "1", "--out", &out_dir],
        SUITE_TIMEOUT,
    )?;
    ensure!(ok, "xlb-suite failed; stderr:\n{stderr}\nstdout:\n{stdout}");
    eprintln!("{stdout}");
    ensure!(
        stdout.contains("scenario") && stdout.contains("xlb/kernel"),
        "no L4 table on stdout:\n{stdout}"
    );
    ensure!(
        stdout.contains("xlb/nginx") && stdout.contains("xlb/haproxy"),
        "no L7 table on stdout:\n{stdout}"
    );
    ensure!(
        stdout.contains("raw AF_XDP loop"),
        "no raw loop line (number or n/a):\n{stdout}"
    );

    let json_path = one_file(&out.0, ".json")?;
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json_path)?)
        .with_context(|| format!("{} is not JSON", json_path.display()))?;
    for (scenario, metric, systems) in SCENARIOS {
        for system in systems {
            let value = doc["medians"][scenario][system][metric]
                .as_f64()
                .with_context(|| format!("no median {scenario}/{system}/{metric} in {json_path:?}"))?;
            ensure!(value > 0.0, "{scenario}/{system}/{metric} = {value}");
        }
    }
    let runs = doc["runs"].as_array().context("no runs array")?;
    let expected: usize = SCENARIOS.iter().map(|(_, _, systems)| systems.len()).sum();
    ensure!(runs.len() == expected, "expected {expected} runs, got {}", runs.len());
    for run in runs {
        ensure!(run["generator"].is_object(), "a run lacks its generator report: {run}");
        ensure!(run["cpu"]["lb_cpu_s"].is_number(), "a run lacks CPU seconds: {run}");
        if run["scenario"] == "tcp_cps_synflood" {
            // The flood ran beside the generator and its report is kept.
            let flood = &run["generator"]["flood"];
            ensure!(flood["sent"].as_u64() > Some(0), "no flood report: {run}");
        }
        if run["scenario"] == "http2_rps" {
            // h2load's summary was parsed and its per-request log read.
            let g = &run["generator"];
            ensure!(
                g["summary"].is_array() && g["latency_us"]["request"]["logged"].as_u64() > Some(0),
                "no h2load summary or log: {run}"
            );
        }
        if run["scenario"] == "tcp_cps_server_close" {
            // One rate per interval, and connections closed by the server first: TIME_WAIT on the servers'
            // side (the client's holds only those of requests it gave up on).
            let intervals = run["generator"]["intervals"].as_array().context("no intervals")?;
            ensure!(intervals.len() == QUICK_INTERVALS, "intervals: {intervals:?}");
            ensure!(
                intervals.iter().all(|i| i["rate"].is_number()),
                "intervals: {intervals:?}"
            );
            let tw = &intervals[0]["time_wait_after"];
            let (servers, client) = (tw["servers"].as_u64(), tw["client"].as_u64());
            ensure!(
                servers.unwrap_or(0) > client.unwrap_or(u64::MAX),
                "the servers should hold the TIME_WAIT states: {tw}"
            );
        }
    }
    ensure!(
        stdout.contains("tcp_cps_server_close, rep 1: connections/s per 5 s interval")
            && stdout.contains("xlb total / kernel total"),
        "no per-interval lines:\n{stdout}"
    );
    ensure!(doc["versions"]["uname_r"].is_string(), "no kernel version recorded");
    for peer in ["nginx", "haproxy"] {
        ensure!(doc["versions"][peer].is_string(), "no {peer} version recorded");
        ensure!(doc["params"][peer]["config"].is_string(), "no {peer} config recorded");
    }

    for suffix in ["-latency.svg", "-throughput.svg"] {
        let path = one_file(&out.0, suffix)?;
        let svg = std::fs::read_to_string(&path)?;
        ensure!(svg.starts_with("<svg"), "{} does not start with <svg", path.display());
        ensure!(svg.trim_end().ends_with("</svg>"), "{} is truncated", path.display());
    }
    Ok(())
}
