//! One instance per interface: a second `xlb run` on the same config is refused without touching the first; a
//! running xlb reports a datapath taken away behind its back; the reported AF_XDP modes are the kernel's.
//!
//! Lab as in `l4.rs`: client ── [ext0 | xlb | int0] ── servers 198.19.0.2-.3 (`xlb-bench sink`). Both
//! interfaces are served by one worker (core 0), so their sockets share one UMEM.

use std::net::SocketAddr;
use std::os::fd::RawFd;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use xlb_tests::appliance::{Appliance, START_TIMEOUT};
use xlb_tests::lab::{wait_until_ok, workspace_bin};
use xlb_tests::topology::TwoArm;
use xlb_tests::traffic::{hello, in_ns, TIMEOUT};

const VIP: &str = "198.18.0.100";
const SERVERS: [&str; 2] = ["198.19.0.2", "198.19.0.3"];
const LOST_LOG: &str = "datapath lost on this interface";

fn config() -> String {
    r#"
[node]
name = "lb1"
control_socket = "CONTROL_SOCKET"

[[interface]]
name = "ext0"
queues = [0]
cores = [0]
addresses = ["198.18.0.10/24"]

[[interface]]
name = "int0"
queues = [0]
cores = [0]
addresses = ["198.19.0.10/24"]

[[listener]]
name = "web"
vip = "198.18.0.100"
port = 80
protocol = "tcp"
scheduler = "rr"
group = "web"

[[group]]
name = "web"
servers = [{ addr = "198.19.0.2:8080", weight = 1 }, { addr = "198.19.0.3:8080", weight = 1 }]

[datapath]
umem_frames = 4096
ring_size = 1024
"#
    .to_string()
}

fn status(xlb: &Appliance) -> Result<Value> {
    let out = xlb.xlbctl(&["status", "--json"])?;
    serde_json::from_str(&out).with_context(|| format!("xlbctl --json status printed non-JSON: {out}"))
}

/// Each interface's `xdp_mode` in the stats document, by name.
fn xdp_modes(stats: &Value) -> Vec<(String, String)> {
    stats["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                i["name"].as_str().unwrap_or("?").to_string(),
                i["xdp_mode"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

fn one_connection(t: &TwoArm) -> Result<String> {
    let target: SocketAddr = format!("{VIP}:80").parse()?;
    in_ns(&t.client, move || hello(target))
}

#[test]
fn a_second_instance_is_refused_and_a_detached_filter_is_reported() -> Result<()> {
    let t = TwoArm::new("second", &SERVERS, 1)?;
    let _sinks = t.sinks("tcp", 8080)?;
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &config())?;
    let served = one_connection(&t)?;
    ensure!(served.starts_with('s'), "unexpected answer through the VIP: {served:?}");
    let status_before = status(&xlb)?;
    ensure!(status_before["healthy"] == Value::Bool(true), "{status_before}");
    ensure!(status_before["datapath"] == "ok", "{status_before}");
    let modes_before = xdp_modes(&xlb.stats()?);
    ensure!(
        modes_before.len() == 2 && modes_before.iter().all(|(_, m)| m == "native"),
        "veth takes native XDP: {modes_before:?}"
    );
    let links_before = t.lb.ip(&["-d", "link", "show"])?;

    // The same config again, in the same namespace.
    let xlb_bin = workspace_bin("xlb")?.display().to_string();
    let second = t.lab.spawn(
        &t.lb,
        &xlb_bin,
        &["run", "--config", &xlb.config_path().display().to_string()],
    )?;
    let Some(exit) = second.wait_timeout(START_TIMEOUT)? else {
        bail!("the second xlb is still running: {}", second.stderr());
    };
    ensure!(!exit.success(), "the second xlb exited with success");
    let stderr = second.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(lines.len() == 1, "expected one error line, got: {stderr}");
    let pid = xlb.proc().pid();
    ensure!(
        lines[0].contains(&format!("is in use by a running xlb (pid {pid})"))
            && lines[0].contains("stop that instance"),
        "the error does not name the running instance and the fix: {stderr}"
    );

    // The first instance did not notice anything: same programs attached, still serving, same report.
    ensure!(
        t.lb.ip(&["-d", "link", "show"])? == links_before,
        "the links changed:\nbefore: {links_before}\nafter: {}",
        t.lb.ip(&["-d", "link", "show"])?
    );
    one_connection(&t)?;
    let status_after = status(&xlb)?;
    ensure!(
        status_after["healthy"] == status_before["healthy"]
            && status_after["datapath"] == status_before["datapath"]
            && status_after["interfaces"] == status_before["interfaces"],
        "status changed:\nbefore: {status_before}\nafter: {status_after}"
    );
    ensure!(xdp_modes(&xlb.stats()?) == modes_before, "stats changed");
    ensure!(!xlb.proc().stderr().contains(LOST_LOG), "{}", xlb.proc().stderr());

    // Someone detaches the program: the running xlb says so.
    t.lb.ip(&["link", "set", "dev", "ext0", "xdp", "off"])?;
    let lost = wait_until_ok(TIMEOUT, "status reports the lost datapath", || {
        let s = status(&xlb)?;
        ensure!(s["healthy"] == Value::Bool(false), "{s}");
        Ok(s)
    })?;
    let text = lost["datapath"].as_str().unwrap_or("");
    ensure!(
        text.starts_with("LOST") && text.contains("ext0: XDP filter detached") && !text.contains("int0"),
        "{lost}"
    );
    let human = xlb.xlbctl(&["status"])?;
    ensure!(human.contains("NOT all running"), "xlbctl status: {human}");
    let modes = xdp_modes(&xlb.stats()?);
    ensure!(
        modes
            == [
                ("ext0".to_string(), "detached".to_string()),
                ("int0".to_string(), "native".to_string())
            ],
        "{modes:?}"
    );
    // Logged once, however many checks ran since: wait until uptime moved by a few checks.
    let uptime = lost["uptime_s"].as_u64().unwrap_or(0);
    wait_until_ok(TIMEOUT, "a few more datapath checks", || {
        let s = status(&xlb)?;
        ensure!(s["uptime_s"].as_u64().unwrap_or(0) >= uptime + 3, "{s}");
        Ok(())
    })?;
    let log = xlb.proc().stderr();
    ensure!(
        log.matches(LOST_LOG).count() == 1,
        "expected the loss logged once:\n{log}"
    );

    // Stopping leaves int0 clean and does not touch what is (not) on ext0.
    let exit = xlb.terminate()?;
    ensure!(exit.success(), "xlb exited with {exit}: {}", xlb.proc().stderr());
    let links = t.lb.ip(&["link", "show"])?;
    ensure!(
        !links.contains("xdp"),
        "a program left attached: {links}\n{}",
        xlb.proc().stderr()
    );
    Ok(())
}

#[test]
fn after_a_crash_the_next_instance_takes_over_the_left_over_filter() -> Result<()> {
    let t = TwoArm::new("crash", &SERVERS, 1)?;
    let _sinks = t.sinks("tcp", 8080)?;
    let first = Appliance::start(&t.lab, &t.lb, "lb1", &config())?;
    one_connection(&t)?;
    first.proc().signal(libc::SIGKILL)?;
    ensure!(
        first.proc().wait_timeout(START_TIMEOUT)?.is_some(),
        "xlb survived SIGKILL"
    );
    let left = t.lb.ip(&["link", "show", "ext0"])?;
    ensure!(
        left.contains("xlb_filter") || left.contains("xdp"),
        "no filter left behind by the crash: {left}"
    );

    // The dead instance's locks went with it; its filters are replaced, and the new one serves.
    let second = Appliance::start(&t.lab, &t.lb, "lb2", &config())?;
    one_connection(&t)?;
    let log = second.proc().stderr();
    ensure!(
        log.matches("replaced an XDP filter left by an earlier xlb run").count() == 2,
        "expected both left-over filters replaced:\n{log}"
    );
    let status = status(&second)?;
    ensure!(status["datapath"] == "ok", "{status}");
    let exit = second.terminate()?;
    ensure!(exit.success(), "xlb exited with {exit}: {}", second.proc().stderr());
    let links = t.lb.ip(&["link", "show"])?;
    ensure!(!links.contains("xdp"), "a program left attached: {links}");
    Ok(())
}

/// xlb's own filter object, as the build left it, with the program renamed to `foo_filter`: an XDP program
/// that is not xlb's.
fn foreign_object(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let target = workspace_bin("xlb")?
        .parent()
        .context("binary directory")?
        .join("build");
    let mut newest: Option<(std::time::SystemTime, std::path::PathBuf)> = None;
    for entry in std::fs::read_dir(&target)? {
        let object = entry?.path().join("out").join("xlb_filter.bpf.o");
        if let Ok(meta) = std::fs::metadata(&object) {
            let modified = meta.modified()?;
            if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
                newest = Some((modified, object));
            }
        }
    }
    let (_, object) = newest.context("no xlb_filter.bpf.o under target/*/build")?;
    let mut bytes = std::fs::read(&object)?;
    let (from, to) = (b"xlb_filter", b"foo_filter");
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
        }
        i += 1;
    }
    let path = dir.join("foreign.bpf.o");
    std::fs::write(&path, bytes)?;
    Ok(path)
}

#[test]
fn programs_xlb_did_not_attach_are_left_alone() -> Result<()> {
    let t = TwoArm::new("foreign", &SERVERS, 1)?;
    let _sinks = t.sinks("tcp", 8080)?;
    let foreign = foreign_object(t.lab.dir())?.display().to_string();

    // Another program on int0: xlb refuses to start, leaves it, and takes its own filter off ext0 again.
    t.lb.ip(&["link", "set", "dev", "int0", "xdp", "obj", &foreign, "sec", "xdp"])?;
    let err = match Appliance::start(&t.lab, &t.lb, "lb1", &config()) {
        Ok(_) => bail!("xlb started over another XDP program"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("another XDP program is attached on interface int0") && err.contains("foo_filter"),
        "the error does not name the program: {err}"
    );
    ensure!(
        t.lb.ip(&["link", "show", "int0"])?.contains("foo_filter"),
        "the other program was removed"
    );
    let ext0 = t.lb.ip(&["link", "show", "ext0"])?;
    ensure!(
        !ext0.contains("xdp"),
        "xlb's filter left on ext0 after the failed start: {ext0}"
    );

    // Without it xlb starts; then someone replaces xlb's program on ext0: reported, and left in place at stop.
    t.lb.ip(&["link", "set", "dev", "int0", "xdp", "off"])?;
    let xlb = Appliance::start(&t.lab, &t.lb, "lb2", &config())?;
    one_connection(&t)?;
    t.lb.ip(&[
        "-force", "link", "set", "dev", "ext0", "xdp", "obj", &foreign, "sec", "xdp",
    ])?;
    let lost = wait_until_ok(TIMEOUT, "status reports the replaced program", || {
        let s = status(&xlb)?;
        ensure!(s["healthy"] == Value::Bool(false), "{s}");
        Ok(s)
    })?;
    let text = lost["datapath"].as_str().unwrap_or("");
    ensure!(
        text.contains("ext0: XDP filter replaced by another program (id "),
        "{lost}"
    );
    let modes = xdp_modes(&xlb.stats()?);
    ensure!(
        modes
            == [
                ("ext0".to_string(), "replaced".to_string()),
                ("int0".to_string(), "native".to_string())
            ],
        "{modes:?}"
    );
    let exit = xlb.terminate()?;
    ensure!(exit.success(), "xlb exited with {exit}: {}", xlb.proc().stderr());
    ensure!(
        t.lb.ip(&["link", "show", "ext0"])?.contains("foo_filter"),
        "xlb detached a program it did not attach"
    );
    let int0 = t.lb.ip(&["link", "show", "int0"])?;
    ensure!(!int0.contains("xdp"), "xlb's own filter left on int0: {int0}");
    Ok(())
}

#[test]
fn a_table_beyond_the_hosts_memory_fails_run_before_any_interface_is_touched() -> Result<()> {
    // The largest table validation allows (2^27 places, ~28 GiB per worker) must exceed this host's memory.
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("MemTotal")?;
    if kib * 1024 >= (1u64 << 27) * 224 {
        eprintln!("skipped: this host has more memory than the largest connection table takes");
        return Ok(());
    }
    let t = TwoArm::new("bigtable", &SERVERS, 1)?;
    let text = format!("{}\n[l4]\nconn_table_size = {}\n", config(), 1u64 << 27);
    let err = match Appliance::start(&t.lab, &t.lb, "lb1", &text) {
        Ok(_) => bail!("xlb started with a table larger than the host's memory"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("l4.conn_table_size: 134217728 connections per worker need about"),
        "the error does not name the field: {err}"
    );
    let links = t.lb.ip(&["link", "show"])?;
    ensure!(
        !links.contains("xdp"),
        "an XDP program attached by the failed start: {links}"
    );
    Ok(())
}

/// `getsockopt(SOL_XDP, XDP_OPTIONS)` of every AF_XDP socket of process `pid`, through descriptors copied with
/// `pidfd_getfd` (root).
fn kernel_zero_copy_flags(pid: u32) -> Result<Vec<bool>> {
    // SAFETY: plain syscall.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) } as RawFd;
    ensure!(pidfd >= 0, "pidfd_open({pid}): {}", std::io::Error::last_os_error());
    let mut flags = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Ok(remote) = entry.file_name().to_string_lossy().parse::<libc::c_int>() else {
            continue;
        };
        // SAFETY: plain syscall; the returned descriptor is ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, remote, 0) } as RawFd;
        if fd < 0 {
            continue;
        }
        let mut opts: u32 = 0;
        let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
        // SAFETY: `struct xdp_options` is one u32. SOL_XDP = 283, XDP_OPTIONS = 8.
        let rc = unsafe { libc::getsockopt(fd, 283, 8, (&mut opts as *mut u32).cast(), &mut len) };
        // SAFETY: we own `fd`.
        unsafe { libc::close(fd) };
        if rc == 0 {
            flags.push(opts & 1 != 0);
        }
    }
    // SAFETY: we own `pidfd`.
    unsafe { libc::close(pidfd) };
    Ok(flags)
}

#[test]
fn the_reported_zero_copy_mode_is_the_kernels_for_both_interfaces_of_a_worker() -> Result<()> {
    let t = TwoArm::new("zcmode", &SERVERS, 1)?;
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &config())?;
    let status = status(&xlb)?;
    let mut reported = Vec::new();
    for iface in status["interfaces"].as_array().into_iter().flatten() {
        for s in iface["sockets"].as_array().into_iter().flatten() {
            ensure!(s["worker"] == "w0", "{status}");
            reported.push((
                iface["name"].as_str().unwrap_or("?").to_string(),
                s["zero_copy"].as_bool().context("zero_copy")?,
            ));
        }
    }
    ensure!(
        reported.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>() == ["ext0", "int0"],
        "one socket per interface expected: {status}"
    );
    let kernel = kernel_zero_copy_flags(xlb.proc().pid())?;
    ensure!(
        kernel.len() == 2,
        "expected two AF_XDP sockets in xlb, found {kernel:?}"
    );
    let mut from_report: Vec<bool> = reported.iter().map(|(_, zc)| *zc).collect();
    let mut from_kernel = kernel.clone();
    from_report.sort();
    from_kernel.sort();
    ensure!(
        from_report == from_kernel,
        "reported {reported:?}, kernel says {kernel:?}"
    );
    // veth has no zero-copy AF_XDP: both are copy mode, the shared-UMEM one included.
    ensure!(kernel.iter().all(|zc| !zc), "veth in zero-copy? {kernel:?}");
    // The stats document says the same.
    let stats = xlb.stats()?;
    for iface in stats["interfaces"].as_array().into_iter().flatten() {
        let zc: Vec<bool> = iface["sockets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["zero_copy"].as_bool())
            .collect();
        ensure!(zc == [false], "{iface}");
    }
    let log = xlb.proc().stderr();
    ensure!(
        !log.lines()
            .any(|l| l.contains("AF_XDP socket bound") && l.contains(" zero_copy=true")),
        "the log claims zero-copy:\n{log}"
    );
    Ok(())
}
