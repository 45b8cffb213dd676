//! A network-namespace lab for xlb integration tests.
//!
//! A [`Lab`] creates network namespaces, veth pairs, bridges and processes and
//! removes all of them when it is dropped, also while a test panics. Rules it
//! enforces so that tests never disturb the host:
//!
//! - every namespace gets a name unique to this process and lab
//!   (`xlb<pid-hex>n<counter>-<label>`), so labs may run concurrently in one
//!   process and across processes;
//! - interfaces are created inside the lab's namespaces, never in the root
//!   namespace;
//! - addresses, routes and ping targets must lie in 198.18.0.0/15, the range
//!   reserved for benchmarking (RFC 2544);
//! - sysctls may only be set under `net.`, which the kernel keeps per namespace.
//!
//! Every failing command yields an error with the full command line, its exit
//! status and its output. Waiting is done by bounded polling ([`wait_until`],
//! [`wait_until_ok`]), never by fixed sleeps.
//!
//! ```no_run
//! use xlb_tests::lab::Lab;
//!
//! let lab = Lab::new("example")?;
//! let (a, b) = (lab.netns("a")?, lab.netns("b")?);
//! lab.veth((&a, "eth0"), (&b, "eth0"))?;
//! a.addr("eth0", "198.18.0.1/30")?;
//! b.addr("eth0", "198.18.0.2/30")?;
//! a.ping("198.18.0.2")?;
//! # anyhow::Ok(())
//! ```

use std::borrow::Cow;
use std::ffi::CStr;
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// How long a stopping process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Upper bound for any command run to completion by [`Netns::run`] and friends;
/// a command still running then is killed and reported as an error.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Environment variable that, when set to `1`, keeps a lab's log directory.
pub const KEEP_ENV: &str = "XLB_LAB_KEEP";

/// Environment variable naming the directory that holds built workspace binaries.
pub const BIN_DIR_ENV: &str = "XLB_BIN_DIR";

/// Prefix of every namespace a lab creates; see [`reap_stale_namespaces`].
const NS_PREFIX: &str = "xlb";

/// Namespace labels longer than this are cut (the full name stays unique).
const MAX_LABEL: usize = 24;

/// Longest interval between two polls of a condition.
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Lines of a process's output shown when a lab is dropped during a panic.
const PANIC_LOG_LINES: usize = 20;

/// Counter making namespace, directory and log names unique within the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Locks `mutex`, ignoring poisoning: the lab must still clean up after a panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// Lab
// ---------------------------------------------------------------------------

/// A set of network namespaces and processes that is torn down on drop.
///
/// Drop order: spawned processes get SIGTERM, then SIGKILL after
/// [`STOP_GRACE`]; any other process left in a lab namespace is killed; the
/// namespaces are deleted; the log directory is removed unless
/// `XLB_LAB_KEEP=1`. Cleanup errors are printed to stderr, never panicked on.
#[derive(Debug)]
pub struct Lab {
    test_name: String,
    dir: PathBuf,
    namespaces: Mutex<Vec<Netns>>,
    procs: Mutex<Vec<Arc<ProcShared>>>,
}

impl Lab {
    /// Starts a lab for `test_name`, which names its log directory.
    ///
    /// Fails if not running as root. Also deletes namespaces left behind by
    /// lab processes that no longer exist (see [`reap_stale_namespaces`]).
    pub fn new(test_name: &str) -> Result<Lab> {
        require_root()?;
        if let Err(err) = reap_stale_namespaces() {
            eprintln!("xlb lab: could not reap stale namespaces: {err:#}");
        }
        let dir = std::env::temp_dir().join(format!(
            "xlb-lab-{:x}-{}-{}",
            std::process::id(),
            next_id(),
            sanitize(test_name, 40)
        ));
        fs::create_dir(&dir).with_context(|| format!("cannot create lab directory {}", dir.display()))?;
        Ok(Lab {
            test_name: test_name.to_owned(),
            dir,
            namespaces: Mutex::new(Vec::new()),
            procs: Mutex::new(Vec::new()),
        })
    }

    /// The per-lab scratch directory holding process logs; free for test files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Namespaces created so far, in creation order.
    pub fn namespaces(&self) -> Vec<Netns> {
        lock(&self.namespaces).clone()
    }

    /// Creates a namespace labelled `label` and brings its `lo` up.
    ///
    /// The label may hold ASCII letters, digits, `_`, `-` and `.`; it is cut
    /// to 24 characters. The real name is unique, see [`Netns::name`].
    pub fn netns(&self, label: &str) -> Result<Netns> {
        check_label(label)?;
        let label: String = label.chars().take(MAX_LABEL).collect();
        let name = format!("{NS_PREFIX}{:x}n{}-{label}", std::process::id(), next_id());
        run_checked(ip_command(&["netns", "add", &name]), None)?;
        let ns = Netns { name, label };
        // Recorded before anything else can fail, so Drop always deletes it.
        lock(&self.namespaces).push(ns.clone());
        ns.link_up("lo")?;
        Ok(ns)
    }

    /// Creates a veth pair between two lab namespaces and sets both ends up.
    ///
    /// The pair is created from inside `a`'s namespace with the peer placed
    /// straight into `b`'s, so no interface ever appears in the root namespace.
    /// Both ends may be in the same namespace.
    pub fn veth(&self, a: (&Netns, &str), b: (&Netns, &str)) -> Result<()> {
        self.veth_queues(a, b, 1)
    }

    /// Like [`Lab::veth`], with `queues` RX and TX queues on each end (the sending kernel spreads flows over
    /// them, as RSS does on a NIC).
    pub fn veth_queues(&self, a: (&Netns, &str), b: (&Netns, &str), queues: u32) -> Result<()> {
        let ((ns_a, if_a), (ns_b, if_b)) = (a, b);
        check_ifname(if_a)?;
        check_ifname(if_b)?;
        let q = queues.max(1).to_string();
        let per_end = ["numtxqueues", q.as_str(), "numrxqueues", q.as_str()];
        let mut args = vec!["link", "add", if_a];
        args.extend(per_end);
        args.extend(["type", "veth", "peer", "name", if_b]);
        args.extend(per_end);
        args.extend(["netns", ns_b.name.as_str()]);
        ns_a.ip(&args)?;
        ns_a.link_up(if_a)?;
        ns_b.link_up(if_b)
    }

    /// Creates bridge `name` in `ns`, enslaves `ports` (interfaces already in
    /// `ns`) and sets the bridge and its ports up.
    pub fn bridge(&self, ns: &Netns, name: &str, ports: &[&str]) -> Result<()> {
        check_ifname(name)?;
        ns.ip(&["link", "add", name, "type", "bridge"])?;
        for port in ports {
            ns.ip(&["link", "set", port, "master", name, "up"])?;
        }
        ns.link_up(name)
    }

    /// Starts `program args` in `ns` (`ip netns exec`), stdin from /dev/null,
    /// stdout and stderr captured to files in [`Lab::dir`].
    ///
    /// `ip netns exec` execs the program, so [`Proc::pid`] is the program's
    /// own pid. Use `env` as the program to set environment variables. The
    /// lab stops the process on drop if its [`Proc`] has not done so already.
    pub fn spawn(&self, ns: &Netns, program: &str, args: &[&str]) -> Result<Proc> {
        let base = format!(
            "{:03}-{}-{}",
            next_id(),
            ns.label,
            sanitize(program.rsplit('/').next().unwrap_or(program), 24)
        );
        let stdout_path = self.dir.join(format!("{base}.stdout"));
        let stderr_path = self.dir.join(format!("{base}.stderr"));
        let create = |path: &Path| File::create(path).with_context(|| format!("cannot create log {}", path.display()));
        let mut cmd = ns.command(program, args);
        cmd.stdin(Stdio::null())
            .stdout(create(&stdout_path)?)
            .stderr(create(&stderr_path)?);
        let cmdline = render(&cmd);
        let child = cmd.spawn().with_context(|| format!("cannot start `{cmdline}`"))?;
        let shared = Arc::new(ProcShared {
            pid: child.id(),
            cmdline,
            stdout_path,
            stderr_path,
            child: Mutex::new(child),
        });
        lock(&self.procs).push(Arc::clone(&shared));
        Ok(Proc { shared })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let procs = std::mem::take(&mut *lock(&self.procs));
        stop_all(&procs, STOP_GRACE);
        if thread::panicking() {
            print_logs(&self.test_name, &procs);
        }
        let namespaces = std::mem::take(&mut *lock(&self.namespaces));
        for ns in namespaces.iter().rev() {
            if let Err(err) = remove_netns(&ns.name) {
                eprintln!("xlb lab: {err:#}");
            }
        }
        if std::env::var(KEEP_ENV).is_ok_and(|v| v == "1") {
            eprintln!("xlb lab `{}`: keeping logs in {}", self.test_name, self.dir.display());
        } else if let Err(err) = fs::remove_dir_all(&self.dir) {
            eprintln!("xlb lab: cannot remove {}: {err}", self.dir.display());
        }
    }
}

/// Sends SIGTERM to every running process, waits up to `grace` for all of them,
/// then SIGKILLs and reaps the rest.
fn stop_all(procs: &[Arc<ProcShared>], grace: Duration) {
    for proc in procs {
        if let Err(err) = proc.signal(libc::SIGTERM) {
            eprintln!("xlb lab: {err:#}");
        }
    }
    poll_until(grace, || {
        procs.iter().all(|p| !matches!(p.try_wait(), Ok(None))).then_some(())
    });
    for proc in procs {
        if let Err(err) = proc.kill_and_reap() {
            eprintln!("xlb lab: {err:#}");
        }
    }
}

/// Prints the tail of every process's logs, to explain a failing test.
fn print_logs(test_name: &str, procs: &[Arc<ProcShared>]) {
    for proc in procs {
        for (what, path) in [("stdout", &proc.stdout_path), ("stderr", &proc.stderr_path)] {
            let text = read_lossy(path);
            if text.trim().is_empty() {
                continue;
            }
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(PANIC_LOG_LINES)..];
            eprintln!(
                "xlb lab `{test_name}`: last {} lines of {what} of `{}` (pid {}):\n{}",
                tail.len(),
                proc.cmdline,
                proc.pid,
                tail.join("\n")
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Netns
// ---------------------------------------------------------------------------

/// Handle to a namespace created by a [`Lab`]; cheap to clone.
///
/// The handle does not own the namespace: the lab deletes it on drop, after
/// which commands through the handle fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    name: String,
    label: String,
}

impl Netns {
    /// The namespace's real (unique) name, as shown by `ip netns list`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The label the namespace was created with.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Runs `ip -n <ns> args...` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run_checked(ip_command(&full), None)
    }

    /// Builds (without running) `ip netns exec <ns> program args...`.
    ///
    /// Processes started from it are not tracked by the lab, although the lab
    /// still kills whatever is left in its namespaces on drop.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]).args(args);
        cmd
    }

    /// Runs `program args` in the namespace; returns its stdout if it exits 0.
    ///
    /// Bounded by [`COMMAND_TIMEOUT`].
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        run_checked(self.command(program, args), None)
    }

    /// Like [`Netns::run`], with `input` fed to the program's stdin.
    pub fn run_input(&self, program: &str, args: &[&str], input: &[u8]) -> Result<String> {
        run_checked(self.command(program, args), Some(input))
    }

    /// Runs `program args` in the namespace and returns whatever it produced,
    /// whatever its exit status. Errors only if it cannot be started or runs
    /// longer than [`COMMAND_TIMEOUT`].
    pub fn output(&self, program: &str, args: &[&str]) -> Result<Output> {
        execute(self.command(program, args), None, COMMAND_TIMEOUT)
    }

    /// Sets interface `ifname` up.
    pub fn link_up(&self, ifname: &str) -> Result<()> {
        self.ip(&["link", "set", "dev", ifname, "up"]).map(drop)
    }

    /// Adds `cidr` (e.g. `198.18.0.1/24`) to `ifname` and sets it up.
    ///
    /// Refuses anything but an IPv4 address inside 198.18.0.0/15 with a
    /// prefix of at least /15.
    pub fn addr(&self, ifname: &str, cidr: &str) -> Result<()> {
        check_lab_cidr(cidr)?;
        self.ip(&["addr", "add", cidr, "dev", ifname])?;
        self.link_up(ifname)
    }

    /// Runs `ip route add args...` in the namespace.
    ///
    /// Every address or prefix among `args` must lie in 198.18.0.0/15 (use
    /// `default` for a default route); IPv6 is refused.
    pub fn route(&self, args: &[&str]) -> Result<()> {
        for arg in args {
            check_route_arg(arg)?;
        }
        let mut full = vec!["route", "add"];
        full.extend_from_slice(args);
        self.ip(&full).map(drop)
    }

    /// The MAC address of `ifname`, from `ip -j link show`.
    pub fn mac(&self, ifname: &str) -> Result<[u8; 6]> {
        let json = self.ip(&["-j", "link", "show", "dev", ifname])?;
        let links: serde_json::Value =
            serde_json::from_str(&json).with_context(|| format!("cannot parse `ip -j link show` output: {json}"))?;
        let text = links
            .get(0)
            .and_then(|link| link.get("address"))
            .and_then(|addr| addr.as_str())
            .ok_or_else(|| anyhow!("no address for {ifname} in `ip -j link show`: {json}"))?;
        parse_mac(text)
    }

    /// Sets the MTU of `ifname`.
    pub fn set_mtu(&self, ifname: &str, mtu: u32) -> Result<()> {
        self.ip(&["link", "set", "dev", ifname, "mtu", &mtu.to_string()])
            .map(drop)
    }

    /// Sets sysctl `key` (e.g. `net.ipv4.ip_forward`) to `value` in the namespace.
    ///
    /// Only `net.` keys are accepted: other sysctls are global and would
    /// change the host.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        check_sysctl_key(key)?;
        self.run("sysctl", &["-q", "-w", &format!("{key}={value}")]).map(drop)
    }

    /// Reads sysctl `key` in the namespace (trimmed).
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        check_sysctl_key(key)?;
        Ok(self.run("sysctl", &["-n", key])?.trim().to_owned())
    }

    /// Turns off checksum and segmentation offloads on `ifname` with `ethtool`,
    /// so frames seen by AF_XDP carry complete checksums and real sizes.
    ///
    /// Returns `Ok(false)` without doing anything if `ethtool` is not
    /// installed.
    pub fn disable_offloads(&self, ifname: &str) -> Result<bool> {
        if find_in_path("ethtool").is_none() {
            return Ok(false);
        }
        let features = ["rx", "tx", "sg", "tso", "gso", "gro"];
        let mut args = vec!["-K", ifname];
        for feature in features {
            args.extend([feature, "off"]);
        }
        self.run("ethtool", &args)?;
        Ok(true)
    }

    /// Sends one ping to `addr` (in 198.18.0.0/15); errors if no reply comes
    /// within a second.
    pub fn ping(&self, addr: &str) -> Result<()> {
        let ip: Ipv4Addr = addr
            .parse()
            .with_context(|| format!("`{addr}` is not an IPv4 address"))?;
        check_lab_ip(ip, addr)?;
        self.run("ping", &["-n", "-q", "-c", "1", "-W", "1", addr]).map(drop)
    }

    /// Moves the calling thread (only it, not the process) into this
    /// namespace, with `setns(2)` on `/run/netns/<name>`.
    ///
    /// Afterwards every socket the thread opens, every interface name it
    /// resolves and every netlink request it makes (e.g. attaching an XDP
    /// program) acts inside the namespace. There is no way back: use a
    /// dedicated thread that ends before the lab is dropped, and do all
    /// namespace-bound teardown (closing sockets, detaching XDP programs) on
    /// that thread. Processes it starts inherit the namespace. Note that
    /// `/sys/class/net` still shows the namespace sysfs was mounted in.
    pub fn enter_current_thread(&self) -> Result<()> {
        let path = Path::new("/run/netns").join(&self.name);
        let file = File::open(&path).with_context(|| format!("cannot open namespace file {}", path.display()))?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: setns(2) takes a valid open descriptor, which `file` keeps
        // alive for the duration of the call.
        if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("cannot enter network namespace {}", self.name));
        }
        Ok(())
    }

    /// Waits until a TCP socket in the namespace listens on `port`.
    pub fn wait_tcp_listen(&self, port: u16, timeout: Duration) -> Result<()> {
        let filter = format!("sport = :{port}");
        wait_until_ok(timeout, &format!("TCP port {port} to listen in {}", self.name), || {
            let out = self.run("ss", &["-H", "-l", "-t", "-n", &filter])?;
            if out.trim().is_empty() {
                bail!("nothing listens on TCP port {port} yet");
            }
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------
// Proc
// ---------------------------------------------------------------------------

/// State of a spawned process, shared between its [`Proc`] and its [`Lab`].
///
/// The child is only reaped under the mutex, so while `try_wait` under the
/// lock reports it running, its pid cannot have been reused.
#[derive(Debug)]
struct ProcShared {
    pid: u32,
    cmdline: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    child: Mutex<Child>,
}

impl ProcShared {
    fn try_wait(&self) -> Result<Option<ExitStatus>> {
        lock(&self.child)
            .try_wait()
            .with_context(|| format!("cannot query `{}` (pid {})", self.cmdline, self.pid))
    }

    /// Sends `sig` unless the process has exited; returns whether it was sent.
    fn signal(&self, sig: i32) -> Result<bool> {
        let mut child = lock(&self.child);
        if child.try_wait()?.is_some() {
            return Ok(false);
        }
        let pid = libc::pid_t::try_from(self.pid).context("pid out of range")?;
        // SAFETY: kill(2) has no memory-safety preconditions. The child is not
        // reaped (checked above while holding the lock), so `pid` is still ours.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("cannot send signal {sig} to `{}` (pid {pid})", self.cmdline));
        }
        Ok(true)
    }

    fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        poll_until(timeout, || self.try_wait().transpose()).transpose()
    }

    fn kill_and_reap(&self) -> Result<ExitStatus> {
        let mut child = lock(&self.child);
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        child
            .kill()
            .and_then(|()| child.wait())
            .with_context(|| format!("cannot kill `{}` (pid {})", self.cmdline, self.pid))
    }

    fn stop(&self, grace: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        match self.wait_timeout(grace)? {
            Some(status) => Ok(status),
            None => self.kill_and_reap(),
        }
    }
}

/// A process started by [`Lab::spawn`]; stopped (SIGTERM, then SIGKILL after
/// [`STOP_GRACE`]) when dropped.
#[derive(Debug)]
pub struct Proc {
    shared: Arc<ProcShared>,
}

impl Proc {
    /// The program's pid.
    pub fn pid(&self) -> u32 {
        self.shared.pid
    }

    /// The full command line, for messages.
    pub fn cmdline(&self) -> &str {
        &self.shared.cmdline
    }

    /// Everything the process has written to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.shared.stdout_path)
    }

    /// Everything the process has written to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.shared.stderr_path)
    }

    /// Path of the file capturing stdout.
    pub fn stdout_path(&self) -> &Path {
        &self.shared.stdout_path
    }

    /// Path of the file capturing stderr.
    pub fn stderr_path(&self) -> &Path {
        &self.shared.stderr_path
    }

    /// Whether the process is still running (it is reaped once it has exited).
    pub fn is_running(&self) -> bool {
        matches!(self.shared.try_wait(), Ok(None))
    }

    /// Errors with the command line, exit status and stderr if the process
    /// has exited: a check that a server did not die during startup.
    pub fn check_running(&self) -> Result<()> {
        match self.shared.try_wait()? {
            None => Ok(()),
            Some(status) => Err(anyhow!(
                "`{}` exited with {status}{}",
                self.cmdline(),
                describe_output(self.stdout().as_bytes(), self.stderr().as_bytes())
            )),
        }
    }

    /// Sends signal `sig` (e.g. `libc::SIGHUP`); errors if the process has exited.
    pub fn signal(&self, sig: i32) -> Result<()> {
        if self.shared.signal(sig)? {
            Ok(())
        } else {
            bail!("`{}` (pid {}) has already exited", self.cmdline(), self.pid())
        }
    }

    /// Waits at most `timeout` for the process to exit; `Ok(None)` if it is
    /// still running then.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.shared.wait_timeout(timeout)
    }

    /// Sends SIGTERM, waits up to `grace`, then SIGKILLs; returns the exit
    /// status (also if the process had exited before).
    pub fn stop(&self, grace: Duration) -> Result<ExitStatus> {
        self.shared.stop(grace)
    }

    /// Stops the process like [`Proc::stop`] with [`STOP_GRACE`], printing
    /// any error to stderr.
    pub fn kill(&self) {
        if let Err(err) = self.stop(STOP_GRACE) {
            eprintln!("xlb lab: {err:#}");
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill();
        }
    }
}

// ---------------------------------------------------------------------------
// Free functions
// ---------------------------------------------------------------------------

/// Errors unless the effective user is root, which namespaces need.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "the xlb lab needs root to create network namespaces, but the effective uid is \
             {euid}: run the tests as root (e.g. `sudo -E cargo test -p xlb-tests`)"
        );
    }
    Ok(())
}

/// Polls `f` with growing intervals (1 ms up to 50 ms) until it returns true;
/// errors naming `what` if that has not happened within `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    poll_until(timeout, || f().then_some(())).ok_or_else(|| anyhow!("timed out after {timeout:?} waiting for {what}"))
}

/// Like [`wait_until`] for a fallible probe: returns the first `Ok` value, or
/// on timeout an error naming `what` and the probe's last error.
pub fn wait_until_ok<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let mut last_err = None;
    poll_until(timeout, || match f() {
        Ok(value) => Some(value),
        Err(err) => {
            last_err = Some(err);
            None
        }
    })
    .ok_or_else(|| {
        let last = last_err.map_or_else(|| "none".to_owned(), |e| format!("{e:#}"));
        anyhow!("timed out after {timeout:?} waiting for {what}; last error: {last}")
    })
}

/// Finds a built binary of the workspace.
///
/// Looks in `$XLB_BIN_DIR` if set; otherwise in the directory of the running
/// executable and its parent (test binaries live in `target/<profile>/deps`,
/// binaries in `target/<profile>`).
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let dirs = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => {
            let exe = std::env::current_exe().context("cannot locate the running executable")?;
            exe.ancestors().skip(1).take(2).map(Path::to_path_buf).collect()
        }
    };
    dirs.iter()
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            anyhow!(
                "workspace binary `{name}` not found in {dirs:?}: run \
                 `cargo build --workspace --bins` first (or set {BIN_DIR_ENV})"
            )
        })
}

/// Names of all network namespaces, as listed by `ip netns list`.
pub fn netns_list() -> Result<Vec<String>> {
    let out = run_checked(ip_command(&["netns", "list"]), None)?;
    Ok(out
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Deletes lab namespaces whose creating process no longer exists (left by
/// a test run that was killed), returning their names. [`Lab::new`] calls
/// this; namespaces of live processes are never touched.
pub fn reap_stale_namespaces() -> Result<Vec<String>> {
    let mut reaped = Vec::new();
    for name in netns_list()? {
        let Some(pid) = creator_pid(&name) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match remove_netns(&name) {
            Ok(()) => reaped.push(name),
            // Another lab may be reaping the same namespace concurrently.
            Err(err) => eprintln!("xlb lab: reaping stale namespace: {err:#}"),
        }
    }
    Ok(reaped)
}

/// Whether `ip` lies in 198.18.0.0/15, the only range tests may use.
pub fn is_lab_addr(ip: Ipv4Addr) -> bool {
    let [a, b, _, _] = ip.octets();
    a == 198 && (b & 0xfe) == 18
}

// ---------------------------------------------------------------------------
// Internals
// ---------------------------------------------------------------------------

/// Parses the creator pid from a name made by [`Lab::netns`]:
/// `xlb<pid-hex>n<counter>-<label>`.
fn creator_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NS_PREFIX)?;
    let (pid_hex, rest) = rest.split_once('n')?;
    let (counter, _label) = rest.split_once('-')?;
    let all = |s: &str, pred: fn(&u8) -> bool| !s.is_empty() && s.as_bytes().iter().all(pred);
    if !all(pid_hex, u8::is_ascii_hexdigit) || !all(counter, u8::is_ascii_digit) {
        return None;
    }
    u32::from_str_radix(pid_hex, 16).ok()
}

/// Kills every process still inside namespace `name`, then deletes it.
fn remove_netns(name: &str) -> Result<()> {
    // A process left in the namespace would keep it (and its interfaces) alive.
    let pids = run_checked(ip_command(&["netns", "pids", name]), None)?;
    for pid in pids.lines().filter_map(|l| l.trim().parse::<libc::pid_t>().ok()) {
        if u32::try_from(pid).is_ok_and(|p| p == std::process::id()) {
            continue;
        }
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    run_checked(ip_command(&["netns", "delete", name]), None).map(drop)
}

fn ip_command(args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    cmd
}

/// Polls `f` with growing intervals until it yields a value or `timeout` passes.
fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(1);
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep(interval.min(deadline - now));
        interval = (interval * 2).min(MAX_POLL_INTERVAL);
    }
}

/// Runs `cmd` to completion within [`COMMAND_TIMEOUT`]; returns stdout on exit
/// status 0, else an error with the command line, status and output.
fn run_checked(cmd: Command, input: Option<&[u8]>) -> Result<String> {
    let line = render(&cmd);
    let output = execute(cmd, input, COMMAND_TIMEOUT)?;
    if !output.status.success() {
        bail!(
            "command `{line}` failed with {}{}",
            output.status,
            describe_output(&output.stdout, &output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `cmd` with `input` on stdin, killing it after `timeout`.
///
/// Output goes to anonymous memory files rather than pipes, so nothing can
/// block on a full pipe or on a background child holding a pipe open.
fn execute(mut cmd: Command, input: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let line = render(&cmd);
    let mut stdout = memfd(c"xlb-lab-stdout")?;
    let mut stderr = memfd(c"xlb-lab-stderr")?;
    let stdin = match input {
        Some(data) => {
            let mut file = memfd(c"xlb-lab-stdin")?;
            file.write_all(data)?;
            file.rewind()?;
            Stdio::from(file)
        }
        None => Stdio::null(),
    };
    cmd.stdin(stdin).stdout(stdout.try_clone()?).stderr(stderr.try_clone()?);
    let mut child = cmd.spawn().with_context(|| format!("cannot start `{line}`"))?;
    drop(cmd); // closes our copies of the child's stdio
    let status = match poll_until(timeout, || child.try_wait().transpose()) {
        Some(status) => status.with_context(|| format!("cannot wait for `{line}`"))?,
        None => {
            // Best effort: the error below is what matters.
            let _ = child.kill();
            let _ = child.wait();
            let (out, err) = (read_back(&mut stdout)?, read_back(&mut stderr)?);
            bail!(
                "command `{line}` did not finish within {timeout:?} and was killed{}",
                describe_output(&out, &err)
            );
        }
    };
    Ok(Output {
        status,
        stdout: read_back(&mut stdout)?,
        stderr: read_back(&mut stderr)?,
    })
}

/// Creates an anonymous in-memory file.
fn memfd(name: &CStr) -> Result<File> {
    // SAFETY: `name` is NUL-terminated and the flags are valid.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("memfd_create failed");
    }
    // SAFETY: `fd` is a fresh, valid descriptor owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn read_back(file: &mut File) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    file.rewind()?;
    file.read_to_end(&mut buf)?;
    Ok(buf)
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// Formats captured output for an error message: `stderr` always, `stdout`
/// when not empty, each cut to its last few kilobytes.
fn describe_output(stdout: &[u8], stderr: &[u8]) -> String {
    const KEEP: usize = 4096;
    let tail = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end();
        match text.char_indices().rev().nth(KEEP) {
            Some((cut, _)) => format!("...{}", &text[cut..]),
            None => text.to_owned(),
        }
    };
    let mut msg = format!("\nstderr: {}", tail(stderr));
    if !stdout.trim_ascii().is_empty() {
        msg.push_str(&format!("\nstdout: {}", tail(stdout)));
    }
    msg
}

/// Renders a command line for messages, quoting arguments as a shell would need.
fn render(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|arg| quote(&arg.to_string_lossy()).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(arg: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        Cow::Borrowed(arg)
    } else {
        Cow::Owned(format!("'{}'", arg.replace('\'', r"'\''")))
    }
}

/// Replaces characters unfit for file names and cuts to `max` characters.
fn sanitize(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .take(max)
        .collect()
}

fn check_label(label: &str) -> Result<()> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "_-.".contains(c);
    if label.is_empty() || !label.chars().all(ok) {
        bail!("invalid namespace label `{label}`: use ASCII letters, digits, `_`, `-` or `.`");
    }
    Ok(())
}

fn check_ifname(name: &str) -> Result<()> {
    let bad = |c: char| c == '/' || c == ':' || c.is_whitespace();
    if name.is_empty() || name.len() > 15 || name == "." || name == ".." || name.contains(bad) {
        bail!("invalid interface name `{name}`: 1 to 15 characters, no `/`, `:` or spaces");
    }
    Ok(())
}

fn check_lab_ip(ip: Ipv4Addr, shown: &str) -> Result<()> {
    if !is_lab_addr(ip) {
        bail!("address `{shown}` refused: the lab only allows addresses in 198.18.0.0/15");
    }
    Ok(())
}

/// Accepts `a.b.c.d` or `a.b.c.d/len` inside 198.18.0.0/15 with `len >= 15`.
fn check_lab_cidr(cidr: &str) -> Result<()> {
    let (addr, prefix) = cidr.split_once('/').unwrap_or((cidr, "32"));
    let ip: Ipv4Addr = addr
        .parse()
        .map_err(|_| anyhow!("`{cidr}` refused: the lab only allows IPv4 addresses in 198.18.0.0/15"))?;
    check_lab_ip(ip, cidr)?;
    match prefix.parse::<u8>() {
        Ok(15..=32) => Ok(()),
        _ => bail!("`{cidr}` refused: prefix length must be 15..=32 to stay inside 198.18.0.0/15"),
    }
}

/// Checks one `ip route add` argument: anything that looks like an address or
/// prefix must be a lab one.
fn check_route_arg(arg: &str) -> Result<()> {
    let addr = arg.split_once('/').map_or(arg, |(addr, _)| addr);
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => check_lab_cidr(arg),
        Ok(IpAddr::V6(_)) => bail!("`{arg}` refused: the lab only allows IPv4 in 198.18.0.0/15"),
        Err(_) => Ok(()),
    }
}

fn check_sysctl_key(key: &str) -> Result<()> {
    if !key.starts_with("net.") || key.contains(|c: char| c == '=' || c.is_whitespace()) {
        bail!("sysctl `{key}` refused: only `net.` keys are per namespace");
    }
    Ok(())
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|part| u8::from_str_radix(part, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC address `{text}`"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow!("bad MAC address `{text}`: expected 6 bytes"))
}

/// Looks `program` up in `$PATH`.
fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_range() {
        assert!(is_lab_addr(Ipv4Addr::new(198, 18, 0, 0)));
        assert!(is_lab_addr(Ipv4Addr::new(198, 19, 255, 255)));
        assert!(!is_lab_addr(Ipv4Addr::new(198, 17, 255, 255)));
        assert!(!is_lab_addr(Ipv4Addr::new(198, 20, 0, 0)));
        assert!(check_lab_cidr("198.18.1.2/24").is_ok());
        assert!(check_lab_cidr("198.18.1.2").is_ok());
        assert!(check_lab_cidr("198.18.1.2/8").is_err());
        assert!(check_lab_cidr("198.18.1.2/33").is_err());
        assert!(check_lab_cidr("fe80::1/64").is_err());
        assert!(check_route_arg("default").is_ok());
        assert!(check_route_arg("via").is_ok());
        assert!(check_route_arg("0.0.0.0/0").is_err());
        assert!(check_route_arg("2001:db8::/32").is_err());
    }

    #[test]
    fn names() {
        assert_eq!(creator_pid("xlb1a2bn7-client"), Some(0x1a2b));
        assert_eq!(creator_pid("xlb1a2bn7-a-b"), Some(0x1a2b));
        assert_eq!(creator_pid("xlbench"), None);
        assert_eq!(creator_pid("xlb+1n7-x"), None);
        assert_eq!(creator_pid("xlb12n-x"), None);
        assert_eq!(creator_pid("other"), None);
        assert!(check_label("lb-1.a_b").is_ok());
        assert!(check_label("a/b").is_err());
        assert!(check_ifname("ext0").is_ok());
        assert!(check_ifname("sixteen-chars-xx").is_err());
    }

    #[test]
    fn helpers() {
        assert_eq!(parse_mac("02:00:0a:FF:00:01").unwrap(), [2, 0, 10, 255, 0, 1]);
        assert!(parse_mac("02:00:0a").is_err());
        assert_eq!(quote("TCP:198.18.0.1:80"), "TCP:198.18.0.1:80");
        assert_eq!(quote("a b'c"), r"'a b'\''c'");
        assert_eq!(sanitize("mod::test name", 8), "mod__tes");
    }
}
