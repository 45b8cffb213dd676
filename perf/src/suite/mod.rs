//! `xlb-suite`: xlb against the Linux kernel's own NAT (L4) and against NGINX and HAProxy as reverse proxies
//! (L7), in one lab, on the same cores and backends.
//!
//! The suite builds a two-arm netns lab ([`lab`]), then for each repetition sets up xlb, runs every
//! [`scenarios::Scenario`], tears xlb down, then sets up each peer in turn (the kernel for the L4
//! scenarios, NGINX and HAProxy for the L7 ones), runs the scenarios of its layer and tears it down again
//! ([`systems`]), so the systems alternate and share whatever drift the machine has. It reports
//! medians over the repetitions ([`report`]), CPU seconds per run ([`cpu`]), the raw AF_XDP loop limit as a
//! reference ([`rawloop`]) and draws two plots ([`svg`]); [`meta`] records parameters and versions.
//!
//! Every load is bounded by its duration (plus a grace period) and every lab is removed on drop, also when
//! a step fails. Nothing here asserts speed: the suite measures and reports.

pub mod cpu;
pub mod h2load;
pub mod intervals;
pub mod keyserver;
pub mod lab;
pub mod meta;
pub mod outage;
mod probe;
pub mod rawloop;
pub mod report;
pub mod scenarios;
pub mod svg;
pub mod systems;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use cpu::CpuUsage;
use intervals::Interval;
use lab::{SuiteLab, GENERATOR_CORE, XLB_CORE};
use probe::probe;
use rawloop::RawLoop;
use report::{OutputFiles, RunRecord, SystemRecord};
use scenarios::{Layer, Scenario};
use systems::{RunningSystem, Setup, SystemKind};

/// Seconds per generator run in full mode.
pub const FULL_SECONDS: f64 = 10.0;
/// Seconds per generator run in quick mode.
pub const QUICK_SECONDS: f64 = 3.0;
/// Repetitions in full mode.
pub const FULL_REPS: usize = 3;
/// Longest run accepted for `--duration`.
pub const MAX_SECONDS: f64 = 600.0;

/// What to run.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Quick mode: short runs, one repetition, the quick raw loop.
    pub quick: bool,
    /// Repetitions per system (each runs every scenario).
    pub reps: usize,
    /// Seconds of load per generator run.
    pub duration: Duration,
    /// Directory for the JSON file and the plots.
    pub out: PathBuf,
    /// Whether to run `xlb-perf xdp-loop`.
    pub raw_loop: bool,
    /// Scenarios to run, in run order (default: all).
    pub scenarios: Vec<Scenario>,
}

impl SuiteOptions {
    /// Defaults for `quick`, overridden by explicit `reps` and `seconds`.
    pub fn new(quick: bool, reps: Option<usize>, seconds: Option<f64>, out: PathBuf, raw_loop: bool) -> Result<Self> {
        let reps = reps.unwrap_or(if quick { 1 } else { FULL_REPS });
        if reps == 0 || reps > 100 {
            bail!("--reps must be 1 to 100");
        }
        let seconds = seconds.unwrap_or(if quick { QUICK_SECONDS } else { FULL_SECONDS });
        if !(0.5..=MAX_SECONDS).contains(&seconds) {
            bail!("--duration must be 0.5 to {MAX_SECONDS} seconds");
        }
        Ok(SuiteOptions {
            quick,
            reps,
            duration: Duration::from_secs_f64(seconds),
            out,
            raw_loop,
            scenarios: Scenario::ALL.to_vec(),
        })
    }

    /// Seconds of one generator run of `scenario`: the suite's `--duration`, or the interval length of a
    /// scenario measured in intervals.
    pub fn run_duration(&self, scenario: Scenario) -> Duration {
        match scenario.intervals(self.quick) {
            Some((_, secs)) => Duration::from_secs_f64(secs),
            None => self.duration,
        }
    }
}

/// What a finished suite produced.
#[derive(Debug)]
pub struct SuiteOutcome {
    /// The comparison table (text, with the raw-loop line).
    pub table: String,
    /// The files written.
    pub files: OutputFiles,
    /// Wall-clock time of the whole suite.
    pub elapsed: Duration,
}

/// Runs the suite; `stop` (set by SIGINT/SIGTERM) aborts it between runs, still tearing the lab down.
pub fn run(opts: &SuiteOptions, stop: &AtomicBool) -> Result<SuiteOutcome> {
    let started = Instant::now();
    let started_unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if cores < 2 {
        bail!("the suite needs at least 2 CPUs (generator on core {GENERATOR_CORE}, xlb on core {XLB_CORE})");
    }
    progress(&format!(
        "{} mode: {} repetition(s) x {} scenario runs ({}), {:.0} s each{}",
        if opts.quick { "quick" } else { "full" },
        opts.reps,
        opts.scenarios.iter().map(|s| s.systems().len()).sum::<usize>(),
        opts.scenarios
            .iter()
            .map(|s| format!(
                "{} on {}",
                s.name(),
                s.systems().iter().map(|k| k.name()).collect::<Vec<_>>().join("/")
            ))
            .collect::<Vec<_>>()
            .join(", "),
        opts.duration.as_secs_f64(),
        opts.scenarios
            .iter()
            .filter_map(|s| s
                .intervals(opts.quick)
                .map(|(n, secs)| format!(" ({}: {n} x {secs:.0} s)", s.name())))
            .collect::<String>()
    ));

    let raw = if opts.raw_loop {
        progress("raw AF_XDP loop: xlb-perf xdp-loop");
        let raw = RawLoop::measure(opts.quick);
        if let Some(err) = &raw.error {
            progress(&format!("raw loop: n/a ({err})"));
        }
        raw
    } else {
        RawLoop::skipped()
    };
    check_stop(stop)?;

    let (runs, system_records, pinned) = measure_all(opts, stop)?;

    let medians = report::medians(&runs);
    let rows = report::table(&medians);
    let irq_time = cpu::irq_time_accounting();
    let table = report::render_table(&rows, &notes(&raw, &runs, &medians, irq_time));

    let host = meta::hostname();
    let date = meta::utc_date(started_unix.as_secs());
    let stem = format!("{date}-{}", meta::file_safe(&host));
    let files = OutputFiles::new(&opts.out, &stem);
    let versions = meta::versions(&host);
    let subtitle = format!(
        "{host}, kernel {}, {} mode, {} rep(s) x {:.0} s; veth pairs in network namespaces (software path)",
        versions["uname_r"].as_str().unwrap_or("?"),
        if opts.quick { "quick" } else { "full" },
        opts.reps,
        opts.duration.as_secs_f64()
    );
    let elapsed = started.elapsed();
    let document = json!({
        "suite": "xlb-suite",
        "schema": 2,
        "date": date,
        "host": host,
        "started_unix_s": started_unix.as_secs(),
        "elapsed_s": report_round(elapsed.as_secs_f64()),
        "mode": if opts.quick { "quick" } else { "full" },
        "params": meta::params(opts, pinned),
        "versions": versions,
        "irq_time_accounting": irq_time,
        "raw_loop": raw,
        "xlb_udp_fraction_of_raw_loop": report::xlb_loop_fraction(&raw, &medians),
        "medians": medians,
        "table": rows,
        "runs": runs,
        "systems": system_records,
    });
    report::write_files(&files, &document, &runs, &medians, &subtitle)?;
    Ok(SuiteOutcome { table, files, elapsed })
}

/// Builds the lab and runs every repetition of every system and scenario.
fn measure_all(opts: &SuiteOptions, stop: &AtomicBool) -> Result<(Vec<RunRecord>, Vec<SystemRecord>, bool)> {
    progress(&format!("building the lab and starting {} sinks", lab::SINKS));
    let lab = SuiteLab::build()?;
    let mut runs = Vec::new();
    let mut records = Vec::new();
    for rep in 0..opts.reps {
        for (kind, setup) in SystemKind::ALL
            .into_iter()
            .flat_map(|k| [(k, Setup::Standard), (k, Setup::Tls)])
        {
            let scenarios: Vec<Scenario> = scenarios_of(&opts.scenarios, kind)
                .into_iter()
                .filter(|s| s.setup() == setup)
                .collect();
            if scenarios.is_empty() {
                continue;
            }
            check_stop(stop)?;
            progress(&format!(
                "rep {}/{}: {} up{}",
                rep + 1,
                opts.reps,
                kind.name(),
                if setup == Setup::Tls {
                    " for the HTTPS scenarios"
                } else {
                    ""
                }
            ));
            let system = RunningSystem::start(kind, &lab, setup)?;
            let outcome = run_scenarios(&lab, &system, rep, &scenarios, opts, stop);
            // Tear down even after a failed scenario; the scenario's error is the one reported.
            let stopped = system.stop(&lab);
            runs.extend(outcome?);
            records.push(SystemRecord {
                rep,
                system: kind,
                stop: stopped.with_context(|| format!("stopping {}", kind.name()))?,
            });
        }
    }
    let pinned = lab.pinned();
    drop(lab);
    Ok((runs, records, pinned))
}

/// How long the idle TLS connections are held before the proxy's memory is read.
const TLS_IDLE_SETTLE: Duration = Duration::from_secs(1);

/// How long a SYN flood runs before the generator beside it starts.
const FLOOD_LEAD: Duration = Duration::from_secs(1);

/// The scenarios of `selected` that run on `kind`, in run order.
pub fn scenarios_of(selected: &[Scenario], kind: SystemKind) -> Vec<Scenario> {
    selected
        .iter()
        .copied()
        .filter(|s| s.systems().contains(&kind))
        .collect()
}

/// Checks that traffic flows through `system`, then runs each of `scenarios` once.
fn run_scenarios(
    lab: &SuiteLab,
    system: &RunningSystem,
    rep: usize,
    scenarios: &[Scenario],
    opts: &SuiteOptions,
    stop: &AtomicBool,
) -> Result<Vec<RunRecord>> {
    let layers: Vec<Layer> = [Layer::L4, Layer::L7, Layer::Https]
        .into_iter()
        .filter(|l| scenarios.iter().any(|s| s.layer() == *l))
        .collect();
    probe(lab, system, &layers)?;
    let mut out = Vec::new();
    for &scenario in scenarios {
        check_stop(stop)?;
        if scenario.new_connections() {
            // New connections to the VIP: none of the systems should meet TIME_WAIT states another one left
            // (the proxies' in `lb`, the client's and servers' own).
            let lb = lab.clear_lb_time_wait().with_context(|| scenario.name().to_owned())?;
            let cleared = lab.clear_time_wait().with_context(|| scenario.name().to_owned())?;
            if lb + cleared.found.total() > 0 {
                progress(&format!(
                    "  {} {}: cleared TIME_WAIT left by earlier runs ({lb} in lb, {} on the servers, {} on the \
                     client; {})",
                    scenario.name(),
                    system.kind().name(),
                    cleared.found.servers,
                    cleared.found.client,
                    cleared.how
                ));
            }
            // Nor the half-open connections a SYN flood left on the servers (they sit on the FULLNAT source
            // tuples both systems use).
            let half_open = lab.drain_half_open().with_context(|| scenario.name().to_owned())?;
            if half_open > 0 {
                progress(&format!(
                    "  {} {}: waited for {half_open} half-open connections on the servers to expire",
                    scenario.name(),
                    system.kind().name(),
                ));
            }
        }
        let xlb_before = match (scenario.layer(), system.appliance()) {
            (Layer::Https, Some(xlb)) => Some((xlb.stats()?, cpu::thread_times(xlb.proc().pid())?)),
            _ => None,
        };
        let ks_before = match system.key_server() {
            Some(ks) if scenario != Scenario::TlsKeyserverOutage => Some(cpu::proc_times(ks.pid())?),
            _ => None,
        };
        let run = match scenario.intervals(opts.quick) {
            None if scenario == Scenario::TlsKeyserverOutage => {
                let run = outage::run(lab, system)
                    .with_context(|| format!("{} through {}", scenario.name(), system.kind().name()))?;
                system.check()?;
                run
            }
            None if scenario == Scenario::TlsIdleMemory => {
                let what = || format!("{} through {}", scenario.name(), system.kind().name());
                let pid = system.pid().context("a proxy without a process")?;
                let args = scenario.generator_args(opts.duration, opts.quick);
                let run = lab
                    .run_hold(
                        &args,
                        Duration::from_secs(scenarios::TLS_IDLE_OPEN_S),
                        TLS_IDLE_SETTLE,
                        pid,
                    )
                    .with_context(what)?;
                system.check()?;
                run
            }
            None => {
                let what = || format!("{} through {}", scenario.name(), system.kind().name());
                let args = scenario.generator_args(opts.duration, opts.quick);
                // A flood beside the generator starts first and ends with it.
                let flood_for = opts.duration + FLOOD_LEAD;
                let flood = match scenario.flood_args(flood_for, lab.client_link_macs()?) {
                    Some(flood_args) => {
                        // Neither system meets the half-open state the other's flood left on the servers.
                        let cleared = lab.clear_time_wait().with_context(what)?;
                        let half_open = lab.drain_half_open().with_context(what)?;
                        if half_open + cleared.found.total() > 0 {
                            progress(&format!(
                                "  {} {}: waited for {half_open} half-open connections on the servers to expire, \
                                 cleared {} TIME_WAIT ({})",
                                scenario.name(),
                                system.kind().name(),
                                cleared.found.total(),
                                cleared.how
                            ));
                        }
                        let proc = lab.start_background(&flood_args).with_context(what)?;
                        std::thread::sleep(FLOOD_LEAD);
                        Some(proc)
                    }
                    None => None,
                };
                let run = lab
                    .run_generator(scenario.generator(), &args, opts.duration, &system.pids())
                    .with_context(what);
                let run = match (run, flood) {
                    (Ok(mut run), Some(proc)) => {
                        let report = lab.finish_background(proc, flood_for).with_context(what)?;
                        if let Some(object) = run.report.as_object_mut() {
                            object.insert("flood".into(), report);
                        }
                        run
                    }
                    (run, _) => run?,
                };
                system.check()?;
                if let Some(flood) = run.report.get("flood") {
                    progress(&format!(
                        "  {} {}: flood of {} SYNs ({:.0}/s) from {} spoofed sources",
                        scenario.name(),
                        system.kind().name(),
                        flood["sent"],
                        flood["rate"].as_f64().unwrap_or(0.0),
                        flood["sources"]
                    ));
                }
                run
            }
            Some((count, secs)) => run_intervals(lab, system, scenario, count, secs, stop)?,
        };
        let mut run = run;
        if let (Some((stats, threads_before)), Some(xlb)) = (xlb_before, system.appliance()) {
            let after = xlb.stats()?;
            let threads_after = cpu::thread_times(xlb.proc().pid())?;
            let (pool, other) = cpu::split_threads(&threads_before, &threads_after, cpu::HANDSHAKE_THREAD_PREFIX);
            let delta = |key: &str| {
                let get = |v: &Value| {
                    v.pointer(&format!("/l7/counts/{key}"))
                        .and_then(Value::as_u64)
                        .unwrap_or(0)
                };
                get(&after).saturating_sub(get(&stats))
            };
            let mut server = serde_json::json!({
                "tls_full_handshakes": delta("tls_full_handshakes"),
                "tls_resumed_handshakes": delta("tls_resumed_handshakes"),
                "tls_handshake_failed": delta("tls_handshake_failed"),
                "tls_handshake_aborted": delta("tls_handshake_aborted"),
                "tls_pool_full": delta("tls_pool_full"),
            });
            if system.key_server().is_some() {
                for key in [
                    "key_server_ok",
                    "key_server_requests",
                    "key_server_no_key_server",
                    "key_server_timeout",
                    "key_server_connection_lost",
                    "key_server_refused",
                ] {
                    server[key] = delta(key).into();
                }
                progress(&format!(
                    "  {} xlb-ks: Key Server signatures ok {} of {} requests ({} no Key Server, {} timeout, {} \
                     connection lost, {} refused)",
                    scenario.name(),
                    server["key_server_ok"],
                    server["key_server_requests"],
                    server["key_server_no_key_server"],
                    server["key_server_timeout"],
                    server["key_server_connection_lost"],
                    server["key_server_refused"]
                ));
            }
            progress(&format!(
                "  {} xlb: server counted {} full and {} resumed handshakes ({} failed, {} aborted, {} refused: pool \
                 full); CPU {:.2} s in the handshake threads, {:.2} s in the others",
                scenario.name(),
                server["tls_full_handshakes"],
                server["tls_resumed_handshakes"],
                server["tls_handshake_failed"],
                server["tls_handshake_aborted"],
                server["tls_pool_full"],
                pool,
                other
            ));
            let mut threads = serde_json::json!({"handshake_pool_cpu_s": pool, "other_cpu_s": other});
            let busiest = cpu::busiest_threads(&threads_before, &threads_after);
            progress(&format!(
                "  {} {}: busiest xlb threads: {}",
                scenario.name(),
                system.kind().name(),
                busiest
                    .iter()
                    .take(4)
                    .map(|(n, s)| format!("{n} {s:.2} s"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            threads["busiest"] = serde_json::json!(busiest.into_iter().take(6).collect::<Vec<_>>());
            if let (Some(before), Some(ks)) = (&ks_before, system.key_server()) {
                let after = cpu::proc_times(ks.pid())?;
                let ks_cpu = (after.user_s + after.system_s - before.user_s - before.system_s).max(0.0);
                threads["key_server_cpu_s"] = ks_cpu.into();
                progress(&format!(
                    "  {} xlb-ks: CPU {ks_cpu:.2} s in the Key Server process",
                    scenario.name()
                ));
            }
            if let Some(object) = run.report.as_object_mut() {
                object.insert("server".into(), server);
                object.insert("xlb_threads".into(), threads);
            }
        }
        if let Some(h) = run.report.get("handshakes").filter(|_| scenario.new_connections()) {
            progress(&format!(
                "  {} {}: the client made {} full and {} resumed handshakes",
                scenario.name(),
                system.kind().name(),
                h["full"],
                h["resumed"]
            ));
        }
        lab.check_sinks()?;
        let metrics = scenario.extract(&run.report, &run.cpu)?;
        let headline = metrics
            .iter()
            .find(|(k, _)| *k == scenario.headline())
            .map_or(0.0, |(_, v)| *v);
        progress(&format!(
            "  {:<10} {:<7} {} = {:.1} (LB CPU {:.2} s in {:.1} s)",
            scenario.name(),
            system.kind().name(),
            scenario.headline(),
            headline,
            run.cpu.lb_cpu_s,
            run.cpu.wall_s
        ));
        out.push(RunRecord {
            rep,
            system: system.kind(),
            scenario,
            command: run.cmdline,
            metrics: metrics.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            cpu: run.cpu,
            generator: run.report,
        });
    }
    Ok(out)
}

/// Runs `scenario` as `count` back-to-back generator runs of `secs` seconds each and combines them
/// ([`intervals::combine`]). The servers' and client's TIME_WAIT sockets are cleared first, so the system
/// starts from the same state whatever ran before it.
fn run_intervals(
    lab: &SuiteLab,
    system: &RunningSystem,
    scenario: Scenario,
    count: usize,
    secs: f64,
    stop: &AtomicBool,
) -> Result<lab::GeneratorRun> {
    let what = || format!("{} through {}", scenario.name(), system.kind().name());
    let cleared = lab.clear_time_wait().with_context(what)?;
    if cleared.found.total() > 0 {
        progress(&format!(
            "  {} {}: cleared TIME_WAIT left by earlier runs ({} on the servers, {} on the client; {})",
            scenario.name(),
            system.kind().name(),
            cleared.found.servers,
            cleared.found.client,
            cleared.how
        ));
    }
    let duration = Duration::from_secs_f64(secs);
    let args = scenario.generator_args(duration, false);
    let mut intervals = Vec::new();
    let mut cpus = Vec::new();
    let mut cmdline = String::new();
    for i in 0..count {
        check_stop(stop)?;
        let run = lab
            .run_generator(scenario.generator(), &args, duration, &system.pids())
            .with_context(what)?;
        system.check()?;
        let time_wait = lab.time_wait()?;
        let interval = Interval {
            report: run.report,
            wall_s: run.cpu.wall_s,
            time_wait,
        };
        let completed = interval
            .report
            .pointer("/counts/completed")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let failed = interval
            .report
            .pointer("/counts/failed")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        progress(&format!(
            "  {} {:<6} interval {}/{count}: {:.0} conn/s ({completed} completed, {failed} failed in {:.1} s; \
             TIME_WAIT: servers {}, client {})",
            scenario.name(),
            system.kind().name(),
            i + 1,
            if interval.wall_s > 0.0 {
                completed as f64 / interval.wall_s
            } else {
                0.0
            },
            interval.wall_s,
            time_wait.servers,
            time_wait.client
        ));
        cmdline = run.cmdline;
        cpus.push(run.cpu);
        intervals.push(interval);
    }
    Ok(lab::GeneratorRun {
        cmdline: format!("{cmdline}  ({count} runs back to back)"),
        report: intervals::combine(scenario.name(), secs, &cleared, &intervals),
        cpu: CpuUsage::sum(&cpus),
    })
}

/// Lines printed under the table: the raw loop and how to read the CPU rows.
fn notes(raw: &RawLoop, runs: &[RunRecord], medians: &report::Medians, irq_time: Option<bool>) -> Vec<String> {
    let mut notes = report::interval_lines(runs);
    notes.extend([
        report::raw_loop_line(raw, medians),
        "LB CPU: xlb = its process's user+system time (all its threads; it busy-polls one core by design except in the HTTPS rows); kernel = host \
         system+irq+softirq time minus the generator's and sinks' system time; nginx/haproxy = the user+system \
         time of the proxying process (NGINX's worker). See perf/README.md."
            .to_owned(),
    ]);
    if runs.iter().any(|r| r.scenario.layer() == Layer::Https) {
        notes.push(format!(
            "HTTPS rows: each system on core {XLB_CORE} alone — NGINX (1 worker) and HAProxy (1 thread) started \
             with taskset -c {XLB_CORE}; xlb restarted for them with every thread (worker, {} full-handshake \
             thread(s) and the resumption thread) pinned to core {XLB_CORE} with taskset -a, its worker sleeping \
             when idle. LB CPU includes all threads of the process (xlb: the handshake threads; the split is in \
             the `of it` rows). The generator (rustls, TLS 1.3, X25519, no certificate check) runs on core \
             {GENERATOR_CORE}; `generator CPU (cores)` near 1 means it, not the proxy, bounded the rate.",
            systems::TLS_HANDSHAKE_THREADS
        ));
    }
    if irq_time == Some(false) && runs.iter().any(|r| r.system == SystemKind::Kernel) {
        notes.push(
            "This kernel lacks CONFIG_IRQ_TIME_ACCOUNTING: NAT work done in softirq inside the generator's and \
             sinks' system calls is charged to them, so the kernel's LB CPU is a lower bound; compare the \
             host CPU per operation rows instead."
                .to_owned(),
        );
    }
    notes
}

fn check_stop(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn progress(msg: &str) {
    eprintln!("xlb-suite: {msg}");
}

fn report_round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let q = SuiteOptions::new(true, None, None, "x".into(), true).unwrap();
        assert_eq!((q.reps, q.duration.as_secs_f64()), (1, QUICK_SECONDS));
        let f = SuiteOptions::new(false, Some(5), Some(2.0), "x".into(), true).unwrap();
        assert_eq!((f.reps, f.duration.as_secs_f64()), (5, 2.0));
        assert!(SuiteOptions::new(false, Some(0), None, "x".into(), true).is_err());
        assert!(SuiteOptions::new(false, None, Some(0.0), "x".into(), true).is_err());
    }

    #[test]
    fn each_system_runs_the_scenarios_of_its_layer() {
        let all = Scenario::ALL.to_vec();
        let without_outage: Vec<Scenario> = all
            .iter()
            .copied()
            .filter(|&s| s != Scenario::TlsKeyserverOutage)
            .collect();
        assert_eq!(
            scenarios_of(&all, SystemKind::Xlb),
            without_outage,
            "xlb runs everything but the Key Server outage, in run order"
        );
        assert_eq!(
            scenarios_of(&all, SystemKind::XlbKs),
            [
                Scenario::TlsHandshakesEcdsa,
                Scenario::TlsHandshakesRsa,
                Scenario::TlsResumed,
                Scenario::TlsKeyserverOutage
            ]
        );
        assert_eq!(
            scenarios_of(&all, SystemKind::Kernel),
            [
                Scenario::TcpCps,
                Scenario::UdpPps64,
                Scenario::Latency,
                Scenario::TcpConnectLatency,
                Scenario::TcpCpsServerClose,
                Scenario::TcpCpsSynflood
            ]
        );
        for peer in [SystemKind::Nginx, SystemKind::Haproxy] {
            assert_eq!(
                scenarios_of(&all, peer),
                [
                    Scenario::HttpRpsKeepalive,
                    Scenario::HttpCps,
                    Scenario::HttpConnectLatency,
                    Scenario::Http2Rps,
                    Scenario::TlsIdleMemory,
                    Scenario::HttpsRpsKeepalive,
                    Scenario::TlsHandshakesEcdsa,
                    Scenario::TlsHandshakesRsa,
                    Scenario::TlsResumed
                ]
            );
        }
        // The HTTPS scenarios run on systems set up for them, after the others.
        let tls: Vec<Scenario> = all.iter().copied().filter(|s| s.setup() == Setup::Tls).collect();
        assert_eq!(tls.len(), 6);
        assert!(tls.iter().all(|s| s.layer() == Layer::Https));
        // Only L7 scenarios selected: the kernel peer is not set up at all.
        assert!(scenarios_of(&[Scenario::HttpCps], SystemKind::Kernel).is_empty());
        assert!(scenarios_of(&[Scenario::Latency], SystemKind::Nginx).is_empty());
    }
}
