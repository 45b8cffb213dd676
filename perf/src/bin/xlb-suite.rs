//! `xlb-suite`: the comparative benchmark — xlb against Linux kernel NAT (nftables) for L4, and against NGINX
//! and HAProxy as HTTP reverse proxies for L7, in one netns lab.
//!
//! ```text
//! xlb-suite [--quick] [--reps N] [--duration S] [--out DIR] [--no-raw-loop] [--scenario NAME]...
//! ```
//!
//! `BENCH_QUICK=1` in the environment is the same as `--quick`: one repetition of 3 s runs, 2 x 5 s for
//! `tcp_cps_server_close` (one to two minutes). The full run does 3 repetitions of 10 s runs, 6 x 10 s for
//! `tcp_cps_server_close` (about ten minutes). Prints progress on stderr, the comparison table on stdout, and
//! writes `<out>/<date>-<host>.json`, `-latency.svg` and `-throughput.svg`. Needs root.
//! See perf/README.md for what is measured and how to read it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;

use xlb_perf::suite::scenarios::{Layer, Scenario};
use xlb_perf::suite::{self, SuiteOptions};

/// xlb against Linux kernel NAT (L4) and against NGINX and HAProxy (L7 HTTP proxying): connection rate,
/// packet rate, request rate and latency through each, in one netns lab.
#[derive(Debug, Parser)]
#[command(name = "xlb-suite", version)]
struct Cli {
    /// Smoke mode: 1 repetition of 3 s runs (2 x 5 s for tcp_cps_server_close) and the quick raw loop.
    /// `BENCH_QUICK=1` (or true/yes/on) does the same; `BENCH_QUICK=0` (false/no/off) does not.
    #[arg(long, env = "BENCH_QUICK", value_parser = clap::builder::BoolishValueParser::new())]
    quick: bool,
    /// Repetitions per system (default 3; 1 with --quick). Medians are reported.
    #[arg(long, value_name = "N")]
    reps: Option<usize>,
    /// Seconds of load per run (default 10; 3 with --quick); not tcp_cps_server_close (6 x 10 s, quick 2 x 5 s).
    #[arg(long, value_name = "S")]
    duration: Option<f64>,
    /// Directory for the results file and plots (created if missing).
    #[arg(long, default_value = "perf/results", value_name = "DIR")]
    out: PathBuf,
    /// Skip the raw AF_XDP loop reference (`xlb-perf xdp-loop`).
    #[arg(long)]
    no_raw_loop: bool,
    /// Run only this scenario (repeatable): tcp_cps, udp_pps_64, latency, tcp_connect_latency, tcp_cps_server_close, tcp_cps_synflood
    /// (L4: xlb and kernel), http_rps_keepalive, http_cps, http_connect_latency, http2_rps (L7: xlb, nginx, haproxy), tls_idle_memory,
    /// https_rps_keepalive, tls_handshakes_ecdsa, tls_handshakes_rsa, tls_resumed (HTTPS: xlb, nginx, haproxy;
    /// the handshake rows also xlb-ks, xlb with its keys on a Key Server), tls_keyserver_outage (xlb-ks alone);
    /// or a whole layer: l4, l7, https. Default: all.
    #[arg(long = "scenario", value_name = "NAME", value_parser = parse_scenario)]
    scenarios: Vec<Vec<Scenario>>,
}

fn parse_scenario(name: &str) -> Result<Vec<Scenario>, String> {
    let layer = match name {
        "l4" => Some(Layer::L4),
        "l7" => Some(Layer::L7),
        "https" => Some(Layer::Https),
        _ => None,
    };
    if let Some(layer) = layer {
        return Ok(Scenario::ALL.into_iter().filter(|s| s.layer() == layer).collect());
    }
    Scenario::from_name(name).map(|s| vec![s]).ok_or_else(|| {
        let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
        format!(
            "unknown scenario `{name}` (one of: {}; or l4, l7, https)",
            names.join(", ")
        )
    })
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xlb-suite: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let mut opts = SuiteOptions::new(cli.quick, cli.reps, cli.duration, cli.out, !cli.no_raw_loop)?;
    if !cli.scenarios.is_empty() {
        let chosen: Vec<Scenario> = cli.scenarios.concat();
        opts.scenarios = Scenario::ALL.into_iter().filter(|s| chosen.contains(s)).collect();
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("cannot install a signal handler")?;
    }
    let outcome = suite::run(&opts, &stop)?;
    println!("{}", outcome.table);
    println!("results: {}", outcome.files.json.display());
    println!(
        "plots:   {}, {}",
        outcome.files.latency_svg.display(),
        outcome.files.throughput_svg.display()
    );
    eprintln!("xlb-suite: done in {:.0} s", outcome.elapsed.as_secs_f64());
    Ok(())
}
