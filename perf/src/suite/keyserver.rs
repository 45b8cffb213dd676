//! The Key Server of the "xlb + Key Server" system (`xlb-ks`): `xlb-keyserver` in the `lb` namespace on the
//! same core as xlb ([`XLB_CORE`]), one signing thread, serving the lab's two private keys over a Unix socket
//! in the lab directory. xlb holds only the certificates (a copy of them, in [`CERTS_DIR`], without the keys)
//! and sends each full handshake's signature to it.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use xlb_tests::lab::Proc;

use super::lab::{SuiteLab, XLB_CORE};
use super::systems::HTTPS_LISTENERS;

/// Directory (in the lab directory) with the private keys, read by the Key Server alone.
pub const KEYS_DIR: &str = "ks-keys";
/// Directory (in the lab directory) with the certificates xlb is given when it uses the Key Server.
pub const CERTS_DIR: &str = "ks-certs";
/// The Key Server's socket file, in the lab directory.
pub const SOCKET: &str = "keyserver.sock";
/// Signing threads of the Key Server (it shares xlb's one core).
pub const SIGN_THREADS: usize = 1;
/// xlb's `[l7.key_server] timeout_ms`.
pub const TIMEOUT_MS: u64 = 1000;
/// How long the Key Server may take to create its socket.
const START: Duration = Duration::from_secs(10);

/// The Key Server config: `keys_dir`, the Unix socket, one signing thread, every key for Unix callers.
pub fn keyserver_config(keys_dir: &Path, socket: &Path) -> String {
    format!(
        "keys_dir = \"{}\"\nlisten_unix = \"{}\"\nsign_threads = {SIGN_THREADS}\nstats_interval_secs = 0\n\n\
         [[authorize]]\nclient = \"unix\"\nkeys = [\"*\"]\n",
        keys_dir.display(),
        socket.display()
    )
}

/// xlb's `[l7.key_server]` table (goes right after `[l7]`).
pub fn xlb_key_server_table(socket: &Path) -> String {
    format!(
        "[l7.key_server]\nendpoints = [\"unix:{}\"]\ntimeout_ms = {TIMEOUT_MS}\n\n",
        socket.display()
    )
}

/// A running (or, during the outage scenario, killed) Key Server.
pub struct KeyServer {
    proc: RefCell<Proc>,
    config: PathBuf,
    socket: PathBuf,
}

impl KeyServer {
    /// Puts the keys into [`KEYS_DIR`] and the certificates into [`CERTS_DIR`], writes the config and starts
    /// the Key Server; returns once its socket exists.
    pub fn start(lab: &SuiteLab) -> Result<KeyServer> {
        let dir = lab.lab.dir();
        let (keys, certs) = (dir.join(KEYS_DIR), dir.join(CERTS_DIR));
        for d in [&keys, &certs] {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        for (_, stem) in HTTPS_LISTENERS {
            let copy = |from: String, to: &Path| {
                std::fs::copy(lab.pki().join(&from), to.join(&from))
                    .with_context(|| format!("cannot copy {from} to {}", to.display()))
            };
            copy(format!("{stem}.key"), &keys)?;
            copy(format!("{stem}.pem"), &certs)?;
        }
        let socket = dir.join(SOCKET);
        let config = dir.join("keyserver.toml");
        std::fs::write(&config, keyserver_config(&keys, &socket))
            .with_context(|| format!("cannot write {}", config.display()))?;
        let proc = spawn(lab, &config, &socket)?;
        Ok(KeyServer {
            proc: RefCell::new(proc),
            config,
            socket,
        })
    }

    /// The socket xlb connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The Key Server's pid.
    pub fn pid(&self) -> u32 {
        self.proc.borrow().pid()
    }

    /// Errors if it exited.
    pub fn check(&self) -> Result<()> {
        self.proc.borrow().check_running()
    }

    /// SIGKILL, as a crash: the socket file stays behind.
    pub fn kill(&self) -> Result<()> {
        let proc = self.proc.borrow();
        proc.signal(libc::SIGKILL)?;
        ensure!(
            proc.wait_timeout(START)?.is_some(),
            "the Key Server did not die of SIGKILL"
        );
        Ok(())
    }

    /// Starts it again (after [`KeyServer::kill`]); returns how long until its socket was back.
    pub fn restart(&self, lab: &SuiteLab) -> Result<Duration> {
        let started = Instant::now();
        // The killed server's socket file is still there: wait for the new one to replace it.
        let _ = std::fs::remove_file(&self.socket);
        let proc = spawn(lab, &self.config, &self.socket)?;
        *self.proc.borrow_mut() = proc;
        Ok(started.elapsed())
    }

    /// Stops it (SIGTERM).
    pub fn stop(self) -> Result<String> {
        let proc = self.proc.into_inner();
        let status = proc.stop(Duration::from_secs(10))?;
        Ok(format!("{status}"))
    }
}

/// Starts `xlb-keyserver --config CONFIG` in `lb` pinned to [`XLB_CORE`] and waits for its socket.
fn spawn(lab: &SuiteLab, config: &Path, socket: &Path) -> Result<Proc> {
    let bin = xlb_tests::lab::workspace_bin("xlb-keyserver")?.display().to_string();
    let core = XLB_CORE.to_string();
    let conf = config.display().to_string();
    let proc = lab
        .lab
        .spawn(&lab.lb, "taskset", &["-c", &core, &bin, "--config", &conf])?;
    xlb_tests::lab::wait_until_ok(START, "the Key Server's socket", || {
        proc.check_running()?;
        ensure!(socket.exists(), "no socket yet");
        Ok(())
    })?;
    Ok(proc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs() {
        let ks = keyserver_config(Path::new("/lab/ks-keys"), Path::new("/lab/keyserver.sock"));
        let parsed: toml::Value = toml::from_str(&ks).unwrap();
        assert_eq!(parsed["keys_dir"].as_str(), Some("/lab/ks-keys"));
        assert_eq!(parsed["listen_unix"].as_str(), Some("/lab/keyserver.sock"));
        assert_eq!(parsed["sign_threads"].as_integer(), Some(1));
        assert_eq!(parsed["authorize"][0]["client"].as_str(), Some("unix"));
        let t = xlb_key_server_table(Path::new("/lab/keyserver.sock"));
        let parsed: toml::Value = toml::from_str(&t).unwrap();
        assert_eq!(
            parsed["l7"]["key_server"]["endpoints"][0].as_str(),
            Some("unix:/lab/keyserver.sock")
        );
    }
}
