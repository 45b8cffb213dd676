//! Runs a real `xlb` process inside a lab namespace and reads its stats through `xlbctl`.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::lab::{workspace_bin, Lab, Netns, Proc};

/// How long xlb gets to attach its filters and open its sockets.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `xlb run` in a lab namespace.
pub struct Appliance {
    proc: Proc,
    ns: Netns,
    socket: PathBuf,
    config: PathBuf,
}

impl Appliance {
    /// Writes `config` (TOML; `CONTROL_SOCKET` in it is replaced by a socket path in the lab directory) and starts
    /// `xlb run` in `ns`, waiting until its control API answers.
    pub fn start(lab: &Lab, ns: &Netns, name: &str, config: &str) -> Result<Appliance> {
        let socket = lab.dir().join(format!("{name}.sock"));
        let path = lab.dir().join(format!("{name}.toml"));
        std::fs::write(&path, config.replace("CONTROL_SOCKET", &socket.display().to_string()))
            .with_context(|| format!("writing {}", path.display()))?;
        let xlb = workspace_bin("xlb")?;
        let proc = lab.spawn(
            ns,
            &xlb.display().to_string(),
            &["run", "--config", &path.display().to_string()],
        )?;
        let appliance = Appliance {
            proc,
            ns: ns.clone(),
            socket,
            config: path,
        };
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            // An xlb that exited (bad config, missing privilege) fails the start at once, with its stderr.
            appliance.proc.check_running()?;
            match appliance.xlbctl(&["status"]) {
                Ok(_) => break,
                Err(e) if std::time::Instant::now() >= deadline => {
                    bail!("xlb control API did not answer within {START_TIMEOUT:?}: {e:#}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        Ok(appliance)
    }

    /// Runs `xlbctl --socket S ARGS` (from the appliance's namespace) and returns its stdout.
    pub fn xlbctl(&self, args: &[&str]) -> Result<String> {
        let ctl = workspace_bin("xlbctl")?;
        let socket = self.socket.display().to_string();
        let mut full = vec!["--socket", socket.as_str()];
        full.extend_from_slice(args);
        self.ns.run(&ctl.display().to_string(), &full)
    }

    /// The stats document (`xlbctl stats --json`).
    pub fn stats(&self) -> Result<Value> {
        let out = self.xlbctl(&["stats", "--json"])?;
        serde_json::from_str(&out).with_context(|| format!("xlbctl stats --json printed non-JSON: {out}"))
    }

    /// A counter from the stats totals, e.g. `"tcp_resets"`, or `"drops.tcp_no_listener"`.
    pub fn total(&self, key: &str) -> Result<u64> {
        let stats = self.stats()?;
        let mut v = &stats["totals"];
        for part in key.split('.') {
            v = &v[part];
        }
        match v.as_u64() {
            Some(n) => Ok(n),
            None => bail!("no counter {key} in stats totals: {}", stats["totals"]),
        }
    }

    /// The control socket path.
    pub fn socket(&self) -> &PathBuf {
        &self.socket
    }

    /// The config file path.
    pub fn config_path(&self) -> &PathBuf {
        &self.config
    }

    /// The process.
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit.
    pub fn terminate(&self) -> Result<ExitStatus> {
        self.proc.signal(libc::SIGTERM)?;
        match self.proc.wait_timeout(Duration::from_secs(10))? {
            Some(status) => Ok(status),
            None => bail!(
                "xlb did not exit within 10 s of SIGTERM; stderr:\n{}",
                self.proc.stderr()
            ),
        }
    }
}
