//! One xlb per interface and per control socket, and a running xlb that notices when its datapath is taken away.
//!
//! **Instance locks.** Before it touches anything, `xlb run` takes an exclusive `flock(2)` on one lock file per
//! control socket (`<control_socket>.lock`) and one per interface (`/run/xlb/iface-<netns>-<name>.lock`, the
//! network namespace named by its inode, since interface names are per namespace). A file lock is released by
//! the kernel when its holder dies however it dies (SIGKILL included), so a crash leaves no stale lock; the
//! file holds the holder's pid, so the refusal names it. (An abstract Unix socket would also vanish with its
//! owner, but it lives in one network namespace, while the control socket path is shared by all of them.) Lock
//! files are left in place: removing one would let two starters lock different files of the same name.
//!
//! **Datapath watch.** [`DatapathWatch::poll`] (the main thread, once a second) asks the kernel whether every
//! interface still has xlb's XDP program and every AF_XDP socket is still open; a change is logged once, and
//! the status and stats documents carry the result (`datapath`, per-interface `xdp_mode` as the kernel reports
//! it, sockets with their kernel-reported zero-copy mode).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Value};
use xlb_stack::xsk::datapath::InterfaceCheck;
use xlb_stack::xsk::Datapath;

use crate::config::Config;

/// Where the per-interface lock files live.
pub const LOCK_DIR: &str = "/run/xlb";

/// The locks of one running instance; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct InstanceLock {
    _files: Vec<File>,
}

/// Takes every lock `config` needs: the control socket's and each interface's, in this network namespace.
pub fn lock(config: &Config) -> Result<InstanceLock, String> {
    lock_in(config, Path::new(LOCK_DIR))
}

fn lock_in(config: &Config, dir: &Path) -> Result<InstanceLock, String> {
    let mut files = Vec::new();
    let socket = &config.node.control_socket;
    if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    let mut socket_lock = socket.clone().into_os_string();
    socket_lock.push(".lock");
    files.push(take(
        &PathBuf::from(socket_lock),
        &format!("control socket {}", socket.display()),
    )?);
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let netns = netns_id();
    for iface in &config.interfaces {
        let path = dir.join(format!("iface-{netns}-{}.lock", iface.name));
        files.push(take(&path, &format!("interface {}", iface.name))?);
    }
    Ok(InstanceLock { _files: files })
}

/// The calling thread's network namespace, as `<device>_<inode>` of its nsfs file.
fn netns_id() -> String {
    match std::fs::metadata("/proc/thread-self/ns/net") {
        Ok(m) => format!("{}_{}", m.dev(), m.ino()),
        Err(_) => "unknown".into(),
    }
}

/// Locks `path` (creating it) and writes our pid into it, or says who holds it.
fn take(path: &Path, what: &str) -> Result<File, String> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("opening the instance lock {}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(format!("locking {}: {err}", path.display()));
        }
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        return Err(busy_message(what, text.trim(), path));
    }
    let pid = std::process::id();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{pid}"))
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(file)
}

/// The refusal when another live xlb holds a lock (one line).
fn busy_message(what: &str, holder: &str, path: &Path) -> String {
    let who = match holder.parse::<u32>() {
        Ok(pid) => format!("xlb (pid {pid})"),
        Err(_) => "xlb".into(),
    };
    format!(
        "{what} is in use by a running {who} (lock {}): stop that instance first (xlbctl status / kill -TERM), \
         or give this one other interfaces and another node.control_socket",
        path.display()
    )
}

/// Memory `config` reserves at start, estimated: per worker, its connection table and its UMEM.
pub fn reserved_bytes(config: &Config) -> u64 {
    let workers = config
        .interfaces
        .iter()
        .flat_map(|i| i.cores.iter())
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    let umem = u64::from(config.datapath.umem_frames) * u64::from(xlb_stack::xsk::port::FRAME_SIZE);
    workers * (xlb_l4::config::conn_table_bytes(config.l4.conn_table_size) + umem)
}

/// The host's memory (`MemTotal` of /proc/meminfo), if it can be read.
pub fn host_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&text)
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses a config whose tables cannot fit in `host_bytes` of memory (`xlb check` and `xlb run`, before
/// anything is touched), naming the field.
pub fn check_memory(config: &Config, host_bytes: Option<u64>) -> Result<(), String> {
    let Some(host) = host_bytes else {
        return Ok(());
    };
    let need = reserved_bytes(config);
    if need > host {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        return Err(format!(
            "l4.conn_table_size: {} connections per worker need about {:.1} GiB in all (with the UMEMs), more than \
             this host's {:.1} GiB of memory",
            config.l4.conn_table_size,
            gib(need),
            gib(host)
        ));
    }
    Ok(())
}

/// What the main thread last learned about the datapath from the kernel.
pub struct DatapathWatch {
    last: Mutex<Vec<InterfaceCheck>>,
}

impl DatapathWatch {
    /// A watch that starts from the datapath's state now.
    pub fn new(dp: &Datapath) -> DatapathWatch {
        let checks = dp.check();
        for c in &checks {
            for (s, _) in &c.sockets {
                if s.zero_copy != s.requested_zero_copy {
                    tracing::info!(iface = %c.name, queue = s.queue, worker = %s.worker, zero_copy = s.zero_copy,
                        "AF_XDP socket shares its worker's UMEM: the kernel gave it the first binding's mode");
                }
            }
        }
        DatapathWatch {
            last: Mutex::new(checks),
        }
    }

    /// Checks again; logs every change once (an error when an interface loses its datapath). Returns whether
    /// every interface's datapath works.
    pub fn poll(&self, dp: &Datapath) -> bool {
        let now = dp.check();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for (new, old) in now.iter().zip(last.iter()) {
            if new == old {
                continue;
            }
            if !new.ok() {
                tracing::error!(iface = %new.name, problem = %describe(new),
                    "datapath lost on this interface: frames for xlb's addresses no longer reach it; restart xlb");
            } else {
                tracing::info!(iface = %new.name, state = %new.xdp, "datapath back on this interface");
            }
        }
        *last = now;
        last.iter().all(InterfaceCheck::ok)
    }

    /// Adds what the kernel says to a control API answer (`GET /v1/status`, `GET /v1/stats`).
    pub fn annotate(&self, method: &str, path: &str, doc: &mut Value) {
        if method != "GET" {
            return;
        }
        match path.split_once('?').map_or(path, |(p, _)| p).trim_end_matches('/') {
            "/v1/status" => self.annotate_status(doc),
            "/v1/stats" => self.annotate_stats(doc),
            _ => {}
        }
    }

    /// Status: `healthy` is false while any interface lost its datapath; `datapath` says which and why.
    pub fn annotate_status(&self, doc: &mut Value) {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        annotate_status(&last, doc);
    }

    /// Stats: each interface's `xdp_mode` is the kernel's (`detached`/`replaced`/`unknown` when lost), with
    /// `datapath_ok` and its sockets' kernel-reported zero-copy mode.
    pub fn annotate_stats(&self, doc: &mut Value) {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        annotate_stats(&last, doc);
    }
}

fn describe(c: &InterfaceCheck) -> String {
    let closed: Vec<String> = c
        .sockets
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(s, _)| s.queue.to_string())
        .collect();
    match (c.xdp.is_attached(), closed.is_empty()) {
        (true, true) => "ok".into(),
        (false, true) => c.xdp.to_string(),
        (true, false) => format!("AF_XDP sockets of queue(s) {} closed", closed.join(",")),
        (false, false) => format!("{}; AF_XDP sockets of queue(s) {} closed", c.xdp, closed.join(",")),
    }
}

fn sockets_json(c: &InterfaceCheck) -> Value {
    c.sockets
        .iter()
        .map(|(s, ok)| json!({"queue": s.queue, "worker": s.worker, "zero_copy": s.zero_copy, "open": ok}))
        .collect()
}

fn annotate_status(checks: &[InterfaceCheck], doc: &mut Value) {
    let lost: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok())
        .map(|c| format!("{}: {}", c.name, describe(c)))
        .collect();
    if !lost.is_empty() {
        doc["healthy"] = json!(false);
    }
    doc["datapath"] = if lost.is_empty() {
        json!("ok")
    } else {
        json!(format!("LOST ({})", lost.join("; ")))
    };
    doc["interfaces"] = checks
        .iter()
        .map(|c| json!({"name": c.name, "xdp_mode": c.xdp.word(), "datapath_ok": c.ok(), "sockets": sockets_json(c)}))
        .collect();
}

fn annotate_stats(checks: &[InterfaceCheck], doc: &mut Value) {
    let Some(interfaces) = doc.get_mut("interfaces").and_then(Value::as_array_mut) else {
        return;
    };
    for iface in interfaces {
        let Some(c) = checks.iter().find(|c| iface["name"].as_str() == Some(c.name.as_str())) else {
            continue;
        };
        iface["xdp_mode"] = json!(c.xdp.word());
        iface["datapath_ok"] = json!(c.ok());
        iface["sockets"] = sockets_json(c);
    }
    doc["datapath_ok"] = json!(checks.iter().all(InterfaceCheck::ok));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(socket: &Path, iface: &str) -> Config {
        Config::parse(&format!(
            "[node]\nname = \"lb1\"\ncontrol_socket = {:?}\n\n[[interface]]\nname = \"{iface}\"\nqueues = [0]\n\
             cores = [0]\naddresses = [\"198.18.0.10/24\"]\n",
            socket.display().to_string()
        ))
        .unwrap()
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xlb-instance-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_second_instance_is_refused_naming_the_holder_and_the_lock_is_free_again_after() {
        let d = dir("lock");
        // The socket's directory is made as the control server would make it.
        let a = config(&d.join("run").join("a.sock"), "ext0");
        let held = lock_in(&a, &d).unwrap();
        let text = std::fs::read_to_string(d.join("run").join("a.sock.lock")).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        // Same control socket: refused, naming it and our pid, on one line.
        let e = lock_in(&a, &d).unwrap_err();
        assert!(
            e.starts_with(&format!("control socket {}", d.join("run").join("a.sock").display())),
            "{e}"
        );
        assert!(e.contains(&format!("xlb (pid {})", std::process::id())), "{e}");
        assert!(!e.contains('\n'), "{e}");
        // Another socket, same interface in the same namespace: refused, naming the interface.
        let e = lock_in(&config(&d.join("b.sock"), "ext0"), &d).unwrap_err();
        assert!(e.starts_with("interface ext0 is in use"), "{e}");
        // Another socket and interface: fine.
        let other = lock_in(&config(&d.join("c.sock"), "ext1"), &d).unwrap();
        drop(held);
        drop(other);
        lock_in(&a, &d).unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_refusal_without_a_pid_still_says_what_to_do() {
        let e = busy_message("interface ext0", "", Path::new("/run/xlb/x.lock"));
        assert!(
            e.starts_with("interface ext0 is in use by a running xlb (lock /run/xlb/x.lock)"),
            "{e}"
        );
        assert!(e.contains("stop that instance first"), "{e}");
    }

    #[test]
    fn a_table_larger_than_the_host_is_refused_naming_the_field() {
        let mut c = config(Path::new("/run/xlb/t.sock"), "ext0");
        c.l4.conn_table_size = 100_000_000;
        let need = reserved_bytes(&c);
        assert_eq!(
            need,
            100_000_000 * xlb_l4::config::CONN_BYTES_ESTIMATE + u64::from(c.datapath.umem_frames) * 4096
        );
        check_memory(&c, Some(need)).unwrap();
        check_memory(&c, None).unwrap();
        let e = check_memory(&c, Some(need - 1)).unwrap_err();
        assert!(
            e.starts_with("l4.conn_table_size: 100000000 connections per worker need about"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        assert_eq!(
            parse_mem_total("MemTotal:       16318040 kB\nMemFree: 1 kB\n"),
            Some(16318040 * 1024)
        );
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn a_lost_interface_shows_in_status_and_stats() {
        use xlb_stack::xsk::filter::{AttachState, AttachedMode};
        let check = |name: &str, xdp| InterfaceCheck {
            name: name.into(),
            xdp,
            sockets: vec![],
        };
        let fine = vec![check("ext0", AttachState::Attached(AttachedMode::Native))];
        let mut status = json!({"node": "lb1", "healthy": true});
        annotate_status(&fine, &mut status);
        assert_eq!(status["healthy"], json!(true));
        assert_eq!(status["datapath"], json!("ok"));
        assert_eq!(status["interfaces"][0]["xdp_mode"], json!("native"));

        let lost = vec![
            check("ext0", AttachState::Attached(AttachedMode::Generic)),
            check("int0", AttachState::Detached),
        ];
        annotate_status(&lost, &mut status);
        assert_eq!(status["healthy"], json!(false));
        let text = status["datapath"].as_str().unwrap();
        assert!(text.starts_with("LOST (int0: XDP filter detached"), "{text}");
        let mut stats =
            json!({"interfaces": [{"name": "ext0", "xdp_mode": "native"}, {"name": "int0", "xdp_mode": "native"}]});
        annotate_stats(&lost, &mut stats);
        assert_eq!(stats["interfaces"][0]["xdp_mode"], json!("generic"));
        assert_eq!(stats["interfaces"][1]["xdp_mode"], json!("detached"));
        assert_eq!(stats["interfaces"][1]["datapath_ok"], json!(false));
        assert_eq!(stats["datapath_ok"], json!(false));
        let replaced = vec![check("ext0", AttachState::Replaced(42))];
        annotate_status(&replaced, &mut status);
        assert!(status["datapath"].as_str().unwrap().contains("id 42"), "{status}");
    }
}
