//! CPU-time accounting around one measured run.
//!
//! Three sources, all read before and after a run:
//!
//! - `/proc/stat` (first line): busy time of every CPU of the host by kind (user, system, irq, softirq);
//! - `/proc/PID/stat`: user and system time of a live process, all its threads summed (the xlb daemon, the
//!   sinks);
//! - `getrusage(RUSAGE_CHILDREN)`: time of children reaped so far. The suite reaps nothing but the generator
//!   while a run is measured, so the difference is the generator's own time.
//!
//! None of this separates softirq work by whom it was done for: a packet's receive path runs in softirq on
//! whichever CPU raised it, often the sender's. [`CpuUsage`] keeps every raw figure so the approximation
//! behind [`CpuUsage::lb_cpu_s`] stays visible in the results file.

use std::fs;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// User and system seconds of one process (or a set of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ProcTimes {
    /// Seconds in user mode.
    pub user_s: f64,
    /// Seconds in the kernel on the process's behalf.
    pub system_s: f64,
}

impl ProcTimes {
    /// User plus system seconds.
    pub fn total(&self) -> f64 {
        self.user_s + self.system_s
    }

    fn minus(&self, earlier: &ProcTimes) -> ProcTimes {
        ProcTimes {
            user_s: (self.user_s - earlier.user_s).max(0.0),
            system_s: (self.system_s - earlier.system_s).max(0.0),
        }
    }

    fn plus(&self, other: &ProcTimes) -> ProcTimes {
        ProcTimes {
            user_s: self.user_s + other.user_s,
            system_s: self.system_s + other.system_s,
        }
    }
}

/// Host-wide CPU seconds by kind, summed over all CPUs (from `/proc/stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct HostTimes {
    /// User and nice time.
    pub user_s: f64,
    /// System time (syscalls, kernel threads).
    pub system_s: f64,
    /// Hard interrupt time.
    pub irq_s: f64,
    /// Softirq time (the network receive path, NAT, forwarding).
    pub softirq_s: f64,
    /// Idle and iowait time.
    pub idle_s: f64,
    /// Time stolen by a hypervisor.
    pub steal_s: f64,
}

impl HostTimes {
    /// All non-idle time.
    pub fn busy(&self) -> f64 {
        self.user_s + self.system_s + self.irq_s + self.softirq_s + self.steal_s
    }

    /// Kernel time: system, irq and softirq.
    pub fn kernel(&self) -> f64 {
        self.system_s + self.irq_s + self.softirq_s
    }

    fn plus(&self, other: &HostTimes) -> HostTimes {
        HostTimes {
            user_s: self.user_s + other.user_s,
            system_s: self.system_s + other.system_s,
            irq_s: self.irq_s + other.irq_s,
            softirq_s: self.softirq_s + other.softirq_s,
            idle_s: self.idle_s + other.idle_s,
            steal_s: self.steal_s + other.steal_s,
        }
    }

    fn minus(&self, earlier: &HostTimes) -> HostTimes {
        let d = |a: f64, b: f64| (a - b).max(0.0);
        HostTimes {
            user_s: d(self.user_s, earlier.user_s),
            system_s: d(self.system_s, earlier.system_s),
            irq_s: d(self.irq_s, earlier.irq_s),
            softirq_s: d(self.softirq_s, earlier.softirq_s),
            idle_s: d(self.idle_s, earlier.idle_s),
            steal_s: d(self.steal_s, earlier.steal_s),
        }
    }
}

/// Clock ticks per second of `/proc` times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf(3) has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// Reads the aggregate `cpu` line of `/proc/stat`.
pub fn host_times() -> Result<HostTimes> {
    let text = fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    parse_proc_stat(&text, ticks_per_second())
}

fn parse_proc_stat(text: &str, hz: f64) -> Result<HostTimes> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no aggregate cpu line in /proc/stat")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse::<f64>().map(|t| t / hz))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad /proc/stat line: {line}"))?;
    if v.len() < 8 {
        bail!("short /proc/stat line: {line}");
    }
    // user nice system idle iowait irq softirq steal [guest guest_nice] (guest time is inside user)
    Ok(HostTimes {
        user_s: v[0] + v[1],
        system_s: v[2],
        idle_s: v[3] + v[4],
        irq_s: v[5],
        softirq_s: v[6],
        steal_s: v[7],
    })
}

/// User and system time of live process `pid`, all threads included.
pub fn proc_times(pid: u32) -> Result<ProcTimes> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_pid_stat(&text, ticks_per_second()).with_context(|| format!("bad {path}: {text}"))
}

fn parse_pid_stat(text: &str, hz: f64) -> Result<ProcTimes> {
    // The command name (field 2) is in parentheses and may hold spaces: count fields after the last `)`.
    let rest = &text[text.rfind(')').context("no `)`")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After `)`: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let tick = |i: usize| -> Result<f64> {
        let raw = fields.get(i).context("too few fields")?;
        Ok(raw.parse::<f64>()? / hz)
    };
    Ok(ProcTimes {
        user_s: tick(11)?,
        system_s: tick(12)?,
    })
}

/// Comm-name prefix of xlb's TLS handshake threads (`xlb-tls-full-N`, `xlb-tls-light-N`).
pub const HANDSHAKE_THREAD_PREFIX: &str = "xlb-tls-";

/// User plus system seconds of each thread of live process `pid`, by thread id, with the thread's name.
pub fn thread_times(pid: u32) -> Result<Vec<(u32, String, f64)>> {
    let dir = format!("/proc/{pid}/task");
    let hz = ticks_per_second();
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot read {dir}"))? {
        let Some(tid) = entry?.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        // A thread may end between the listing and the read.
        let Ok(stat) = fs::read_to_string(format!("{dir}/{tid}/stat")) else {
            continue;
        };
        let times = parse_pid_stat(&stat, hz).with_context(|| format!("bad {dir}/{tid}/stat"))?;
        out.push((tid, stat_comm(&stat).to_owned(), times.total()));
    }
    Ok(out)
}

/// The command name (field 2, without its parentheses) of a `/proc/PID/stat` line.
fn stat_comm(stat: &str) -> &str {
    match (stat.find('('), stat.rfind(')')) {
        (Some(a), Some(b)) if a < b => &stat[a + 1..b],
        _ => "",
    }
}

/// CPU seconds between two [`thread_times`] samples of one process, split into the threads whose name starts
/// with `prefix` and all the others: `(matching, others)`. Threads that appeared in between count from zero.
pub fn split_threads(before: &[(u32, String, f64)], after: &[(u32, String, f64)], prefix: &str) -> (f64, f64) {
    let mut matching = 0.0;
    let mut others = 0.0;
    for (tid, name, total) in after {
        let earlier = before
            .iter()
            .find(|(t, n, _)| t == tid && n == name)
            .map_or(0.0, |(_, _, v)| *v);
        let d = (total - earlier).max(0.0);
        if name.starts_with(prefix) {
            matching += d;
        } else {
            others += d;
        }
    }
    (matching, others)
}

/// CPU seconds per thread name between two [`thread_times`] samples (threads of one name summed), largest first.
pub fn busiest_threads(before: &[(u32, String, f64)], after: &[(u32, String, f64)]) -> Vec<(String, f64)> {
    let mut by_name: Vec<(String, f64)> = Vec::new();
    for (tid, name, total) in after {
        let earlier = before
            .iter()
            .find(|(t, n, _)| t == tid && n == name)
            .map_or(0.0, |(_, _, v)| *v);
        let d = (total - earlier).max(0.0);
        match by_name.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v += d,
            None => by_name.push((name.clone(), d)),
        }
    }
    by_name.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    by_name
}

/// Time of every child reaped so far (`getrusage(RUSAGE_CHILDREN)`).
pub fn children_times() -> ProcTimes {
    // SAFETY: an all-zero rusage is a valid value for getrusage(2) to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return ProcTimes::default();
    }
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    ProcTimes {
        user_s: secs(usage.ru_utime),
        system_s: secs(usage.ru_stime),
    }
}

/// Whether the running kernel accounts softirq time separately from tasks (`CONFIG_IRQ_TIME_ACCOUNTING`);
/// `None` if its config cannot be read (`/boot/config-<release>` or `/proc/config.gz` through `zcat`).
///
/// Without it, softirq work that runs inside a task's system call (on veth: the whole receive path of a
/// packet the task sends) is charged to that task's system time as well as to the host's softirq time.
pub fn irq_time_accounting() -> Option<bool> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let config = fs::read_to_string(format!("/boot/config-{}", release.trim()))
        .ok()
        .or_else(|| {
            let out = std::process::Command::new("zcat")
                .arg("/proc/config.gz")
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        })?;
    config_flag(&config, "CONFIG_IRQ_TIME_ACCOUNTING")
}

fn config_flag(config: &str, name: &str) -> Option<bool> {
    config.lines().find_map(|line| {
        if line == format!("{name}=y") {
            Some(true)
        } else if line == format!("# {name} is not set") {
            Some(false)
        } else {
            None
        }
    })
}

/// Everything read at one instant.
#[derive(Debug, Clone)]
pub struct CpuSample {
    at: Instant,
    host: HostTimes,
    children: ProcTimes,
    lb: Option<ProcTimes>,
    sinks: ProcTimes,
}

impl CpuSample {
    /// Samples the host, reaped children, the load balancer's processes `lb_pids` (summed; none: the kernel)
    /// and `sink_pids`.
    pub fn take(lb_pids: &[u32], sink_pids: &[u32]) -> Result<CpuSample> {
        let lb = if lb_pids.is_empty() {
            None
        } else {
            Some(
                lb_pids
                    .iter()
                    .map(|&pid| proc_times(pid))
                    .try_fold(ProcTimes::default(), |acc, t| t.map(|t| acc.plus(&t)))?,
            )
        };
        let sinks = sink_pids
            .iter()
            .map(|&pid| proc_times(pid))
            .try_fold(ProcTimes::default(), |acc, t| t.map(|t| acc.plus(&t)))?;
        Ok(CpuSample {
            at: Instant::now(),
            host: host_times()?,
            children: children_times(),
            lb,
            sinks,
        })
    }
}

/// CPU seconds spent during one run, by whom (as far as it can be told).
#[derive(Debug, Clone, Serialize)]
pub struct CpuUsage {
    /// Wall-clock seconds between the samples.
    pub wall_s: f64,
    /// Host-wide time by kind, all CPUs.
    pub host: HostTimes,
    /// The generator process.
    pub generator: ProcTimes,
    /// The sink processes together.
    pub sinks: ProcTimes,
    /// The xlb process (xlb runs only).
    pub xlb_process: Option<ProcTimes>,
    /// The load balancer's CPU seconds: xlb: its process's user + system time; kernel: host system + irq +
    /// softirq time minus the generator's and sinks' system time.
    pub lb_cpu_s: f64,
    /// The same formula for both systems: all busy time on the host minus the generator's and sinks' user +
    /// system time. Includes every softirq (also the client's and servers' own TCP/UDP work) and anything
    /// else running on the host.
    pub residual_cpu_s: f64,
}

impl CpuUsage {
    /// The usage between `before` and `after`.
    pub fn between(before: &CpuSample, after: &CpuSample) -> CpuUsage {
        let host = after.host.minus(&before.host);
        let generator = after.children.minus(&before.children);
        let sinks = after.sinks.minus(&before.sinks);
        let xlb_process = match (&before.lb, &after.lb) {
            (Some(b), Some(a)) => Some(a.minus(b)),
            _ => None,
        };
        let lb_cpu_s = match xlb_process {
            Some(x) => x.total(),
            None => (host.kernel() - generator.system_s - sinks.system_s).max(0.0),
        };
        let residual_cpu_s = (host.busy() - generator.total() - sinks.total()).max(0.0);
        CpuUsage {
            wall_s: (after.at - before.at).as_secs_f64(),
            host,
            generator,
            sinks,
            xlb_process,
            lb_cpu_s,
            residual_cpu_s,
        }
    }
}

impl CpuUsage {
    /// The usage of consecutive runs together (every figure summed).
    pub fn sum(parts: &[CpuUsage]) -> CpuUsage {
        let mut total = CpuUsage {
            wall_s: 0.0,
            host: HostTimes::default(),
            generator: ProcTimes::default(),
            sinks: ProcTimes::default(),
            xlb_process: None,
            lb_cpu_s: 0.0,
            residual_cpu_s: 0.0,
        };
        for p in parts {
            total.wall_s += p.wall_s;
            total.host = total.host.plus(&p.host);
            total.generator = total.generator.plus(&p.generator);
            total.sinks = total.sinks.plus(&p.sinks);
            total.xlb_process = match (total.xlb_process, p.xlb_process) {
                (Some(a), Some(b)) => Some(a.plus(&b)),
                (a, b) => a.or(b),
            };
            total.lb_cpu_s += p.lb_cpu_s;
            total.residual_cpu_s += p.residual_cpu_s;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busiest_threads_by_name() {
        let before = vec![(1, "xlb".to_owned(), 1.0), (2, "w".to_owned(), 0.5)];
        let after = vec![
            (1, "xlb".to_owned(), 1.5),
            (2, "w".to_owned(), 2.5),
            (3, "w".to_owned(), 1.0),
        ];
        assert_eq!(
            busiest_threads(&before, &after),
            [("w".to_owned(), 3.0), ("xlb".to_owned(), 0.5)]
        );
    }

    #[test]
    fn sums_consecutive_runs() {
        let part = |lb: f64, xlb: Option<f64>| CpuUsage {
            wall_s: 10.0,
            host: HostTimes {
                user_s: 1.0,
                softirq_s: 0.5,
                ..HostTimes::default()
            },
            generator: ProcTimes {
                user_s: 0.25,
                system_s: 0.5,
            },
            sinks: ProcTimes::default(),
            xlb_process: xlb.map(|u| ProcTimes {
                user_s: u,
                system_s: 0.0,
            }),
            lb_cpu_s: lb,
            residual_cpu_s: 1.0,
        };
        let s = CpuUsage::sum(&[part(1.0, Some(1.0)), part(2.0, Some(2.0))]);
        assert_eq!((s.wall_s, s.lb_cpu_s, s.residual_cpu_s), (20.0, 3.0, 2.0));
        assert_eq!((s.host.user_s, s.host.softirq_s, s.generator.system_s), (2.0, 1.0, 1.0));
        assert_eq!(s.xlb_process.map(|p| p.user_s), Some(3.0));
        assert_eq!(CpuUsage::sum(&[part(1.0, None)]).xlb_process, None);
    }

    #[test]
    fn parses_proc_stat() {
        let text = "cpu  100 5 200 1000 10 3 40 0 0 0\ncpu0 50 0 100 500 5 1 20 0 0 0\n";
        let t = parse_proc_stat(text, 100.0).unwrap();
        assert_eq!(t.user_s, 1.05);
        assert_eq!(t.system_s, 2.0);
        assert_eq!(t.idle_s, 10.1);
        assert_eq!(t.irq_s, 0.03);
        assert_eq!(t.softirq_s, 0.4);
        assert!((t.busy() - 3.48).abs() < 1e-9);
        assert!(parse_proc_stat("cpu 1 2\n", 100.0).is_err());
    }

    #[test]
    fn parses_pid_stat_with_odd_names() {
        let text = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1000 0 0";
        let t = parse_pid_stat(text, 100.0).unwrap();
        assert_eq!(t.user_s, 2.5);
        assert_eq!(t.system_s, 0.75);
        assert!(parse_pid_stat("42 (x) S 1", 100.0).is_err());
    }

    #[test]
    fn thread_split() {
        let t = |tid, name: &str, v| (tid, name.to_owned(), v);
        let before = [t(1, "xlb", 1.0), t(2, "xlb-tls-full-0", 2.0), t(3, "xlb-ext0-0", 5.0)];
        let after = [
            t(1, "xlb", 1.5),
            t(2, "xlb-tls-full-0", 4.0),
            t(3, "xlb-ext0-0", 6.0),
            t(4, "xlb-tls-light-0", 0.25),
        ];
        assert_eq!(split_threads(&before, &after, HANDSHAKE_THREAD_PREFIX), (2.25, 1.5));
        assert_eq!(stat_comm("42 (xlb-tls-full-0) S 1 2"), "xlb-tls-full-0");
        assert_eq!(stat_comm("42 (a) b) S 1"), "a) b");
        let own = thread_times(std::process::id()).unwrap();
        assert!(own.iter().any(|(tid, _, _)| *tid == std::process::id()));
    }

    #[test]
    fn kernel_config_flags() {
        let c = "CONFIG_A=y\n# CONFIG_IRQ_TIME_ACCOUNTING is not set\n";
        assert_eq!(config_flag(c, "CONFIG_IRQ_TIME_ACCOUNTING"), Some(false));
        assert_eq!(config_flag(c, "CONFIG_A"), Some(true));
        assert_eq!(config_flag(c, "CONFIG_B"), None);
    }

    #[test]
    fn own_process_times_are_readable() {
        let t = proc_times(std::process::id()).unwrap();
        assert!(t.total() >= 0.0);
        assert!(host_times().unwrap().busy() > 0.0);
    }
}
