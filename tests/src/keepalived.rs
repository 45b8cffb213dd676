//! A real keepalived (VRRP only) in a lab namespace, as the other VRRP router of interoperability tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::lab::{Lab, Netns, Proc};

/// keepalived's binary (Debian package `keepalived`).
pub const KEEPALIVED: &str = "/usr/sbin/keepalived";

/// What a keepalived instance is: its VRRP instance settings.
#[derive(Debug, Clone)]
pub struct KeepalivedConfig<'a> {
    /// Keeps files of several instances apart (router id, config and pid files).
    pub name: &'a str,
    /// Interface the instance runs on.
    pub interface: &'a str,
    /// Virtual router id.
    pub vrid: u8,
    /// Priority.
    pub priority: u8,
    /// Advertisement interval in seconds (fractions allowed with VRRP v3).
    pub advert_int: &'a str,
    /// The virtual address it holds when master.
    pub vip: &'a str,
}

/// A running keepalived.
pub struct Keepalived {
    proc: Proc,
    vrrp_pidfile: PathBuf,
}

impl Keepalived {
    /// Starts keepalived in `ns` as a VRRP v3 backup (it becomes master if it wins the election).
    pub fn start(lab: &Lab, ns: &Netns, c: &KeepalivedConfig<'_>) -> Result<Keepalived> {
        let KeepalivedConfig {
            name,
            interface,
            vrid,
            priority,
            advert_int,
            vip,
        } = c;
        let dir = lab.dir();
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "global_defs {{\n    router_id {name}\n    vrrp_version 3\n}}\n\
                 vrrp_instance VI_1 {{\n    state BACKUP\n    interface {interface}\n    virtual_router_id {vrid}\n    \
                 priority {priority}\n    advert_int {advert_int}\n    \
                 virtual_ipaddress {{\n        {vip}/32\n    }}\n}}\n"
            ),
        )?;
        let vrrp_pidfile = dir.join(format!("{name}-vrrp.pid"));
        let pidfile = dir.join(format!("{name}.pid"));
        let path = |p: &Path| p.to_str().map(str::to_owned).context("lab path is not UTF-8");
        let args = [
            "-n".to_owned(), // foreground: the lab tracks the parent
            "-l".to_owned(), // log to the console (the lab captures it)
            "-D".to_owned(),
            "-G".to_owned(), // no syslog
            "-P".to_owned(), // VRRP only
            "-R".to_owned(), // do not respawn a killed VRRP child: a SIGKILL is a crash
            "-f".to_owned(),
            path(&conf)?,
            "-p".to_owned(),
            path(&pidfile)?,
            "-r".to_owned(),
            path(&vrrp_pidfile)?,
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = lab.spawn(ns, KEEPALIVED, &args)?;
        Ok(Keepalived { proc, vrrp_pidfile })
    }

    /// What keepalived logged so far.
    pub fn log(&self) -> String {
        self.proc.stdout() + &self.proc.stderr()
    }

    /// The pid of the VRRP child process.
    pub fn vrrp_pid(&self) -> Result<libc::pid_t> {
        let text = std::fs::read_to_string(&self.vrrp_pidfile)
            .with_context(|| format!("no VRRP pid file {}", self.vrrp_pidfile.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("bad VRRP pid file: {text:?}"))
    }

    /// Kills the VRRP child with SIGKILL (no priority-0 advert: a crash) and waits for the parent to exit.
    pub fn crash(&self) -> Result<()> {
        let pid = self.vrrp_pid()?;
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is keepalived's live VRRP child.
        if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("kill -9 {pid}"));
        }
        match self.proc.wait_timeout(Duration::from_secs(5))? {
            Some(_) => Ok(()),
            None => bail!("keepalived did not exit after its VRRP child was killed"),
        }
    }

    /// Fails if keepalived complained about the adverts it received.
    pub fn check_log_clean(&self) -> Result<()> {
        let log = self.log();
        for complaint in ["checksum", "invalid", "Invalid", "mismatch", "TTL"] {
            ensure!(
                !log.contains(complaint),
                "keepalived complains ({complaint}) about our adverts:\n{log}"
            );
        }
        Ok(())
    }

    /// The process.
    pub fn proc(&self) -> &Proc {
        &self.proc
    }
}
