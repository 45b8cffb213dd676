//! The raw AF_XDP loop limit: `xlb-perf xdp-loop`, run once as a reference point.
//!
//! It measures how many 64-byte frames xlb's worker loop reflects over a veth pair with no protocol work at
//! all, in its own lab. A missing or failing `xlb-perf` is reported as "n/a", never as a suite failure.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use xlb_tests::lab::workspace_bin;

/// Longest the loop benchmark may run (it has its own bounds; this guards against a hang).
const TIMEOUT: Duration = Duration::from_secs(120);

/// Outcome of the raw loop measurement.
#[derive(Debug, Clone, Serialize)]
pub struct RawLoop {
    /// Frames per second reflected, if the benchmark ran.
    pub reflected_pps: Option<f64>,
    /// The command run.
    pub command: String,
    /// Its full JSON report.
    pub report: Option<Value>,
    /// Why there is no number.
    pub error: Option<String>,
}

impl RawLoop {
    /// Not run at all.
    pub fn skipped() -> RawLoop {
        RawLoop {
            reflected_pps: None,
            command: String::new(),
            report: None,
            error: Some("skipped (--no-raw-loop)".into()),
        }
    }

    /// Runs `xlb-perf xdp-loop` (with `--quick` if `quick`).
    pub fn measure(quick: bool) -> RawLoop {
        let mut args = vec!["xdp-loop"];
        if quick {
            args.push("--quick");
        }
        let command = format!("xlb-perf {}", args.join(" "));
        match run(&args) {
            Ok(report) => RawLoop {
                reflected_pps: report.get("reflected_pps").and_then(Value::as_f64),
                error: report
                    .get("reflected_pps")
                    .and_then(Value::as_f64)
                    .is_none()
                    .then(|| "no reflected_pps in its output".to_owned()),
                command,
                report: Some(report),
            },
            Err(err) => RawLoop {
                reflected_pps: None,
                command,
                report: None,
                error: Some(format!("{err:#}")),
            },
        }
    }
}

fn run(args: &[&str]) -> Result<Value> {
    let bin = workspace_bin("xlb-perf")?;
    let mut child = Command::new(&bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    // Its output is a few lines: collect it on threads so a full pipe cannot block it.
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            // Best effort; the error says what happened. SIGTERM first so it can clean up its lab.
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(3));
            let _ = child.kill();
            let _ = child.wait();
            bail!("xlb-perf did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
    let stderr = err.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        bail!(
            "xlb-perf exited with {status}: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("xlb-perf printed no JSON line")?;
    serde_json::from_str(line).with_context(|| format!("xlb-perf printed bad JSON: {line}"))
}

fn drain(mut pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}
