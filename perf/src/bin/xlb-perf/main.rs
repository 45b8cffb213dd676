//! `xlb-perf`: benchmarks of xlb's datapath, run inside a network-namespace lab.
//!
//! `xlb-perf xdp-loop` measures the raw AF_XDP forwarding rate of xlb's own worker loop. Two namespaces,
//! `gen` and `dut`, are joined by a veth pair (`gen0` <-> `dut0`, 198.18.250.0/24). In `dut` a [`Worker`]
//! running the [`Reflector`] pipeline sends every frame back with its MAC addresses swapped. In `gen` a
//! generator drives its own AF_XDP socket: it transmits a pre-built UDP frame from 198.18.250.11 to
//! 198.18.250.12 in batches and counts the reflected frames coming back. Neither address is configured on a
//! kernel interface: only the XDP filters know them, so no kernel stack answers or forwards the test
//! traffic. The generator keeps at most `--window` frames in flight, so it measures what the loop sustains
//! rather than how fast it can overflow rings.
//!
//! Output: one JSON object on stdout, a human summary on stderr. Rates are over the measurement only:
//!
//! - `sent_pps`: frames the generator queued on its TX ring; `gen_tx_pps`: frames its kernel finished
//!   transmitting (completions); `dut_rx_pps`/`dut_tx_pps`: the worker's ring counters; `reflected_pps`:
//!   frames back at the generator; `loss_ratio`: 1 - reflected/sent.
//! - `generator_bound`: true when the generator's window was full less than half the time, i.e. the
//!   generator, not the loop, set the rate. `dut_kernel_share`/`gen_kernel_share`: share of each thread's
//!   CPU time spent in the kernel.
//! - `dut_counters`, `gen_written_off`: whole-run totals, warm-up included; `dut_frames_after_stop`: where the
//!   DUT's UMEM frames are once its worker has stopped.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::{self, ScopedJoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;

use xlb_stack::config::{DatapathConfig, Idle, XdpMode, ZeroCopy};
use xlb_stack::counters::{SharedCounters, WorkerSnapshot};
use xlb_stack::reflect::Reflector;
use xlb_stack::wire::build::{self, DEFAULT_TTL, ETHERTYPE_IPV4};
use xlb_stack::wire::{checksum, EthernetAddress, ETH_HEADER_LEN, IPV4_HEADER_LEN, UDP_HEADER_LEN};
use xlb_stack::xsk::filter::{AddrKind, AttachedMode, FilterStats, XdpFilter};
use xlb_stack::xsk::port::{create_umem, open_port, FrameDesc, Port, PortSpec, Umem};
use xlb_stack::xsk::worker::{FrameCounts, Worker, WorkerOptions};
use xlb_tests::lab::{Lab, Netns};

/// Generator-side interface.
mod report;
use report::report;

const GEN_IF: &str = "gen0";
/// DUT-side interface.
const DUT_IF: &str = "dut0";
/// Kernel address of the generator namespace.
const GEN_CIDR: &str = "198.18.250.1/24";
/// Kernel address of the DUT namespace.
const DUT_CIDR: &str = "198.18.250.2/24";
/// Source of the test traffic (known to no kernel).
const SRC_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 11);
/// Destination of the test traffic: the DUT's XDP filter sends it to the worker. Reflected frames keep it
/// (the reflector only swaps MAC addresses), so the generator's filter claims it too.
const DST_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 12);
/// UDP ports of the test traffic (discard).
const UDP_PORTS: (u16, u16) = (9, 9);
/// Longest a side may take to set up (attach XDP, create the UMEM, bind the socket).
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest run accepted, so a mistyped `--seconds` cannot run for days.
const MAX_SECONDS: f64 = 3600.0;
/// Measurement time of `--quick`.
const QUICK_SECONDS: f64 = 2.0;
/// How often the main thread checks that both sides are still running.
const HEALTH_CHECK_EVERY: Duration = Duration::from_millis(50);
/// With the window full and nothing reflected for this long, the in-flight frames are written off as lost
/// so a loss cannot stall the generator.
const STALL: Duration = Duration::from_millis(50);
/// Largest frame that fits the veth's default 1500-byte MTU.
const MAX_FRAME: usize = 1514;
/// Thread names (at most 15 bytes), to find the threads' CPU times in /proc.
const DUT_THREAD: &str = "xlbperf-dut";
const GEN_THREAD: &str = "xlbperf-gen";

#[derive(Parser, Debug)]
#[command(
    name = "xlb-perf",
    about = "Benchmarks of xlb's datapath, run in a network-namespace lab"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Raw AF_XDP forwarding rate of the worker loop: frames reflected over a veth pair.
    XdpLoop(XdpLoopArgs),
    /// Per-packet cost of the L4 forwarder vs concurrent sessions (1k → 1M) and memory per session.
    ConntrackScale(ScaleArgs),
    /// Per-segment cost of L7's in-stack TCP vs open connections (10 → 100k).
    L7Scale(L7ScaleArgs),
}

/// XDP attach mode on both veth ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Native if the driver supports it, else generic.
    Auto,
    /// Driver mode.
    Native,
    /// Generic (SKB) mode.
    Generic,
}

impl From<Mode> for XdpMode {
    fn from(mode: Mode) -> XdpMode {
        match mode {
            Mode::Auto => XdpMode::Auto,
            Mode::Native => XdpMode::Native,
            Mode::Generic => XdpMode::Generic,
        }
    }
}

#[derive(Args, Debug, Clone)]
struct XdpLoopArgs {
    /// Measurement time in seconds, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Short run: measure for 2 s (overrides --seconds).
    #[arg(long)]
    quick: bool,
    /// Warm-up in seconds, excluded from the measurement.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Frame length in bytes, from the Ethernet header to the end of the UDP payload (veth has no FCS).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// XDP attach mode of both filters.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    xdp_mode: Mode,
    /// Core the DUT worker is pinned to.
    #[arg(long, default_value_t = 1)]
    dut_core: usize,
    /// Core the generator is pinned to.
    #[arg(long, default_value_t = 0)]
    gen_core: usize,
    /// Frames per batch, for the worker and the generator.
    #[arg(long, default_value_t = DatapathConfig::default().batch_size)]
    batch: usize,
    /// Size of every ring (power of two).
    #[arg(long, default_value_t = DatapathConfig::default().ring_size)]
    ring: u32,
    /// UMEM frames on each side.
    #[arg(long, default_value_t = DatapathConfig::default().umem_frames)]
    umem_frames: u32,
    /// Most frames the generator keeps in flight (sent, not yet reflected back).
    #[arg(long, default_value_t = 1024)]
    window: usize,
}

impl XdpLoopArgs {
    fn measure_seconds(&self) -> f64 {
        if self.quick {
            QUICK_SECONDS
        } else {
            self.seconds
        }
    }

    fn validate(&self) -> Result<()> {
        let seconds = self.measure_seconds();
        if !(seconds > 0.0 && seconds <= MAX_SECONDS) {
            bail!("--seconds must be in (0, {MAX_SECONDS}]");
        }
        if !(self.warmup >= 0.0 && self.warmup <= MAX_SECONDS) {
            bail!("--warmup must be in [0, {MAX_SECONDS}]");
        }
        let min = ETH_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN;
        if !(min..=MAX_FRAME).contains(&self.size) {
            bail!("--size must be in {min}..={MAX_FRAME}");
        }
        if !self.ring.is_power_of_two() {
            bail!("--ring must be a power of two");
        }
        if self.batch == 0 || self.batch > self.ring as usize {
            bail!("--batch must be in 1..=--ring");
        }
        if self.window == 0 {
            bail!("--window must be at least 1");
        }
        // The generator gives `ring` frames to its fill ring and needs `window` more to transmit from.
        if (self.umem_frames as usize) < self.ring as usize + self.window {
            bail!("--umem-frames must be at least --ring + --window");
        }
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        for (flag, core) in [("--dut-core", self.dut_core), ("--gen-core", self.gen_core)] {
            if !cores.iter().any(|c| c.id == core) {
                bail!("{flag} {core}: no such core (this machine has {})", cores.len());
            }
        }
        if self.dut_core == self.gen_core {
            eprintln!("xlb-perf: warning: generator and DUT share core {}", self.gen_core);
        }
        Ok(())
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::XdpLoop(args) => xdp_loop(&args),
        Command::ConntrackScale(args) => conntrack_scale(&args),
        Command::L7Scale(args) => l7_scale(&args),
    }
}

// ---------------------------------------------------------------------------
// Scenario
// ---------------------------------------------------------------------------

/// What the DUT thread reports once its worker is about to run.
struct DutReady {
    counters: Arc<SharedCounters>,
    mode: AttachedMode,
    zero_copy: bool,
}

/// What the DUT thread reports when it has stopped.
struct DutReport {
    frames: FrameCounts,
    filter: Option<FilterStats>,
}

/// What the generator thread reports once it is about to send.
struct GenReady {
    mode: AttachedMode,
    zero_copy: bool,
}

/// Counters of the generator, written by its thread and read by the main thread.
#[derive(Default)]
struct GenCounters {
    /// Frames queued on the TX ring.
    sent: AtomicU64,
    /// Frames the kernel finished transmitting.
    completed: AtomicU64,
    /// Reflected frames received.
    received: AtomicU64,
    /// In-flight frames written off as lost after a stall.
    written_off: AtomicU64,
    /// Nanoseconds spent with the window full, waiting for reflected frames.
    blocked_ns: AtomicU64,
}

/// A reading of both sides' counters.
struct Sample {
    at: Instant,
    sent: u64,
    completed: u64,
    received: u64,
    blocked_ns: u64,
    dut: WorkerSnapshot,
    dut_cpu: Option<CpuTime>,
    gen_cpu: Option<CpuTime>,
}

impl Sample {
    fn take(gen: &GenCounters, dut: &SharedCounters) -> Sample {
        Sample {
            at: Instant::now(),
            sent: gen.sent.load(Ordering::Relaxed),
            completed: gen.completed.load(Ordering::Relaxed),
            received: gen.received.load(Ordering::Relaxed),
            blocked_ns: gen.blocked_ns.load(Ordering::Relaxed),
            dut: dut.snapshot(),
            dut_cpu: CpuTime::of_thread(DUT_THREAD),
            gen_cpu: CpuTime::of_thread(GEN_THREAD),
        }
    }
}

/// CPU time of a thread, in clock ticks.
#[derive(Debug, Clone, Copy)]
struct CpuTime {
    user: u64,
    system: u64,
}

impl CpuTime {
    /// The CPU time of this process's thread named `name`, from `/proc/self/task/*/stat`.
    fn of_thread(name: &str) -> Option<CpuTime> {
        for entry in std::fs::read_dir("/proc/self/task").ok()? {
            let dir = entry.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // proc(5): after the parenthesised command come state (field 3) ... utime (14), stime (15).
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            return Some(CpuTime {
                user: fields.get(11)?.parse().ok()?,
                system: fields.get(12)?.parse().ok()?,
            });
        }
        None
    }

    /// Share of the CPU time between `self` and `later` spent in the kernel.
    fn kernel_share(self, later: CpuTime) -> Option<f64> {
        let user = later.user.saturating_sub(self.user);
        let system = later.system.saturating_sub(self.system);
        (user + system > 0).then(|| system as f64 / (user + system) as f64)
    }
}

/// Sets the flags when dropped, so threads stop however the main thread leaves the scope.
struct StopOnDrop<'a>(&'a [&'a AtomicBool]);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        for flag in self.0 {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// Options of `conntrack-scale`.
#[derive(Args, Debug)]
struct ScaleArgs {
    /// Session counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000,1000000")]
    sizes: Vec<usize>,
    /// Data packets forwarded per size.
    #[arg(long, default_value_t = 2_000_000)]
    packets: usize,
    /// Smaller run (sizes up to 100k, 200k packets).
    #[arg(long)]
    quick: bool,
    /// Packets per batch (prefetch all, then process each, as a worker does); 1 processes packets one at a time
    /// without prefetching.
    #[arg(long, default_value_t = 64)]
    batch: usize,
}

fn conntrack_scale(args: &ScaleArgs) -> Result<()> {
    let (sizes, packets) = if args.quick {
        (
            args.sizes.iter().copied().filter(|n| *n <= 100_000).collect(),
            args.packets.min(200_000),
        )
    } else {
        (args.sizes.clone(), args.packets)
    };
    xlb_perf::scale::run(&sizes, packets, args.batch)
}

/// Options of `l7-scale`.
#[derive(Args, Debug)]
struct L7ScaleArgs {
    /// Connection counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "10,1000,10000,100000")]
    sizes: Vec<usize>,
    /// Segments received per size.
    #[arg(long, default_value_t = 500_000)]
    segments: usize,
    /// Smaller run (100k segments per size).
    #[arg(long)]
    quick: bool,
}

fn l7_scale(args: &L7ScaleArgs) -> Result<()> {
    let segments = if args.quick {
        args.segments.min(100_000)
    } else {
        args.segments
    };
    xlb_perf::l7scale::run(&args.sizes, segments)
}

fn xdp_loop(args: &XdpLoopArgs) -> Result<()> {
    args.validate()?;
    let lab = Lab::new("xlb-perf-xdp-loop")?;
    let gen_ns = lab.netns("gen")?;
    let dut_ns = lab.netns("dut")?;
    lab.veth((&gen_ns, GEN_IF), (&dut_ns, DUT_IF))?;
    gen_ns.addr(GEN_IF, GEN_CIDR)?;
    dut_ns.addr(DUT_IF, DUT_CIDR)?;
    for ns in [&gen_ns, &dut_ns] {
        // Frames the XDP filters pass on must never be routed back into the loop.
        ns.sysctl("net.ipv4.ip_forward", "0")?;
    }
    let frame = udp_frame(
        args.size,
        EthernetAddress(dut_ns.mac(DUT_IF)?),
        EthernetAddress(gen_ns.mac(GEN_IF)?),
    );

    let gen_counters = GenCounters::default();
    let (gen_stop, dut_stop) = (AtomicBool::new(false), AtomicBool::new(false));
    // Scoped threads are joined before the scope returns, also on error, so both have left their namespace
    // (closing their sockets and detaching their filters there) before `lab` deletes the namespaces.
    let result = thread::scope(|s| {
        let flags = [&gen_stop, &dut_stop];
        let _stop = StopOnDrop(&flags);

        let (dut_tx, dut_rx) = mpsc::channel();
        let dut = thread::Builder::new()
            .name(DUT_THREAD.into())
            .spawn_scoped(s, || dut_side(&dut_ns, args, &dut_stop, dut_tx))?;
        let (dut_ready, dut) = await_ready(dut_rx, dut, "DUT")?;

        let (gen_tx, gen_rx) = mpsc::channel();
        let gen = thread::Builder::new()
            .name(GEN_THREAD.into())
            .spawn_scoped(s, || generator(&gen_ns, args, &frame, &gen_stop, &gen_counters, gen_tx))?;
        let (gen_ready, gen) = await_ready(gen_rx, gen, "generator")?;

        let both_running = || !dut.is_finished() && !gen.is_finished();
        let warmup = Duration::from_secs_f64(args.warmup);
        if sleep_while(warmup, both_running) {
            let start = Sample::take(&gen_counters, &dut_ready.counters);
            let measure = Duration::from_secs_f64(args.measure_seconds());
            if sleep_while(measure, both_running) {
                let end = Sample::take(&gen_counters, &dut_ready.counters);
                gen_stop.store(true, Ordering::Relaxed);
                join(gen, "generator")?;
                dut_stop.store(true, Ordering::Relaxed);
                let dut_report = join(dut, "DUT")?;
                let written_off = gen_counters.written_off.load(Ordering::Relaxed);
                return Ok(report(
                    args,
                    &start,
                    &end,
                    &dut_ready,
                    &gen_ready,
                    &dut_report,
                    written_off,
                ));
            }
        }
        // A side ended early: its error says why.
        gen_stop.store(true, Ordering::Relaxed);
        dut_stop.store(true, Ordering::Relaxed);
        join(gen, "generator")?;
        join(dut, "DUT")?;
        Err(anyhow!("a side stopped before the measurement ended"))
    });
    drop(lab);
    let (json, human) = result?;
    println!("{json}");
    eprintln!("{human}");
    Ok(())
}

/// A side's thread.
type Side<'s, R> = ScopedJoinHandle<'s, Result<R>>;

/// Waits for a side's ready message and hands the side back. If the side ends without sending one (it
/// failed during setup), joins it and returns its error.
fn await_ready<'s, T, R>(rx: mpsc::Receiver<T>, side: Side<'s, R>, name: &str) -> Result<(T, Side<'s, R>)> {
    match rx.recv_timeout(SETUP_TIMEOUT) {
        Ok(ready) => Ok((ready, side)),
        // The side dropped its sender, so it is ending: joining it does not block for long.
        Err(mpsc::RecvTimeoutError::Disconnected) => match join(side, name) {
            Err(err) => Err(err),
            Ok(_) => bail!("{name} ended without starting"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => bail!("{name} not ready after {SETUP_TIMEOUT:?}"),
    }
}

/// Joins a side, turning a panic into an error.
fn join<R>(side: Side<'_, R>, name: &str) -> Result<R> {
    side.join()
        .map_err(|_| anyhow!("{name} thread panicked"))?
        .with_context(|| format!("{name} failed"))
}

/// Sleeps for `total` in short steps while `running` holds; returns whether it held throughout.
fn sleep_while(total: Duration, running: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + total;
    loop {
        if !running() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        thread::sleep(HEALTH_CHECK_EVERY.min(deadline - now));
    }
}

// ---------------------------------------------------------------------------
// DUT
// ---------------------------------------------------------------------------

/// The device under test: a reflector worker on `dut0`, run until `stop`. Runs on its own thread, which it
/// moves into the `dut` namespace.
fn dut_side(ns: &Netns, args: &XdpLoopArgs, stop: &AtomicBool, ready: mpsc::Sender<DutReady>) -> Result<DutReport> {
    ns.enter_current_thread()?;
    let filter = XdpFilter::attach(DUT_IF, args.xdp_mode.into())?;
    let frames = args.umem_frames.max(2 * args.ring);
    let (umem, descs) = create_umem(frames, args.ring)?;
    let spec = PortSpec {
        ifname: DUT_IF.into(),
        queue: 0,
        zero_copy: ZeroCopy::Auto,
        generic_xdp: filter.mode() == AttachedMode::Generic,
    };
    let port = open_port(&umem, &spec, args.ring)?;
    filter
        .register_socket(0, port.fd())
        .context("registering the DUT socket")?;
    filter
        .add_address(DST_IP, AddrKind::Local)
        .context("adding the DUT address")?;
    let zero_copy = port.zero_copy;
    let options = WorkerOptions {
        name: "dut".into(),
        core: Some(args.dut_core),
        idle: Idle::Busy,
        batch_size: args.batch,
        ring_size: args.ring,
    };
    let worker = Worker::new(options, umem, descs, vec![port], Reflector::default());
    let report_ready = DutReady {
        counters: worker.counters(),
        mode: filter.mode(),
        zero_copy,
    };
    ready.send(report_ready).map_err(|_| anyhow!("main thread gone"))?;
    let worker = worker.run(stop);
    let report = DutReport {
        frames: worker.frames(),
        filter: filter.stats().ok(),
    };
    // The socket closes before the filter detaches, both in this namespace.
    drop(worker);
    drop(filter);
    Ok(report)
}

// ---------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------

/// Writes the test frame: Ethernet/IPv4/UDP from [`SRC_IP`] to [`DST_IP`], `size` bytes, valid checksums.
fn udp_frame(size: usize, dst: EthernetAddress, src: EthernetAddress) -> Vec<u8> {
    let mut frame = vec![0u8; size];
    build::ethernet(&mut frame, dst, src, ETHERTYPE_IPV4);
    let udp_len = size - ETH_HEADER_LEN - IPV4_HEADER_LEN;
    build::ipv4_header(&mut frame[ETH_HEADER_LEN..], SRC_IP, DST_IP, 17, udp_len, DEFAULT_TTL);
    let udp = &mut frame[ETH_HEADER_LEN + IPV4_HEADER_LEN..];
    udp[0..2].copy_from_slice(&UDP_PORTS.0.to_be_bytes());
    udp[2..4].copy_from_slice(&UDP_PORTS.1.to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    for (i, byte) in udp[UDP_HEADER_LEN..].iter_mut().enumerate() {
        *byte = i as u8;
    }
    let sum = checksum::l4_checksum(SRC_IP.octets(), DST_IP.octets(), 17, udp);
    // A computed 0 is sent as all ones (RFC 768): 0 means "no checksum".
    let sum = if sum == 0 { 0xffff } else { sum };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    frame
}

/// The generator: transmits `frame` from `gen0` and counts what comes back, until `stop`. Runs on its own
/// thread, which it moves into the `gen` namespace and pins to `--gen-core`.
fn generator(
    ns: &Netns,
    args: &XdpLoopArgs,
    frame: &[u8],
    stop: &AtomicBool,
    counters: &GenCounters,
    ready: mpsc::Sender<GenReady>,
) -> Result<()> {
    ns.enter_current_thread()?;
    if !core_affinity::set_for_current(core_affinity::CoreId { id: args.gen_core }) {
        eprintln!(
            "xlb-perf: warning: could not pin the generator to core {}",
            args.gen_core
        );
    }
    let filter = XdpFilter::attach(GEN_IF, args.xdp_mode.into())?;
    let (umem, descs) = create_umem(args.umem_frames, args.ring)?;
    let spec = PortSpec {
        ifname: GEN_IF.into(),
        queue: 0,
        zero_copy: ZeroCopy::Auto,
        generic_xdp: filter.mode() == AttachedMode::Generic,
    };
    let mut port = open_port(&umem, &spec, args.ring)?;
    filter
        .register_socket(0, port.fd())
        .context("registering the generator socket")?;
    // Reflected frames still carry DST_IP: claim it so they reach this socket, not the kernel.
    filter
        .add_address(DST_IP, AddrKind::Local)
        .context("adding the generator address")?;
    ready
        .send(GenReady {
            mode: filter.mode(),
            zero_copy: port.zero_copy,
        })
        .map_err(|_| anyhow!("main thread gone"))?;
    let result = GenLoop::new(&umem, &mut port, descs, args, frame).run(stop, counters);
    // The socket closes before the filter detaches, both in this namespace.
    drop(port);
    drop(filter);
    result
}

/// The generator's frames and its send/receive loop.
///
/// The UMEM is split in two pools: `ring` frames circulate between the fill ring and the RX ring (received
/// frames go straight back), the rest hold the pre-built frame and circulate between the TX and completion
/// rings. The TX pool is written once, so sending costs no copy.
struct GenLoop<'a> {
    umem: &'a Umem,
    port: &'a mut Port,
    batch: usize,
    window: usize,
    frame_len: usize,
    /// TX frames ready to send (holding the pre-built frame).
    tx_free: Vec<FrameDesc>,
    /// Received frames the fill ring had no room for yet.
    rx_spare: Vec<FrameDesc>,
    scratch: Vec<FrameDesc>,
}

impl<'a> GenLoop<'a> {
    fn new(umem: &'a Umem, port: &'a mut Port, mut descs: Vec<FrameDesc>, args: &XdpLoopArgs, frame: &[u8]) -> Self {
        let tx_free = descs.split_off(args.ring as usize);
        let mut this = GenLoop {
            umem,
            port,
            batch: args.batch,
            window: args.window,
            frame_len: frame.len(),
            tx_free,
            rx_spare: descs,
            scratch: vec![FrameDesc::default(); args.batch],
        };
        for desc in &mut this.tx_free {
            // SAFETY: the frame is ours (nothing has been given to the kernel yet).
            let mut data = unsafe { this.umem.data_mut(desc) };
            data.cursor().set_pos(frame.len());
            data.contents_mut().copy_from_slice(frame);
        }
        this.refill();
        this
    }

    /// Gives spare RX frames to the fill ring.
    fn refill(&mut self) {
        if self.rx_spare.is_empty() {
            return;
        }
        // SAFETY: spare frames are ours and belong to this port's UMEM.
        let given = unsafe { self.port.fill_batch(&self.rx_spare) };
        self.rx_spare.drain(..given);
    }

    fn run(mut self, stop: &AtomicBool, counters: &GenCounters) -> Result<()> {
        let (mut sent, mut completed, mut received) = (0u64, 0u64, 0u64);
        let (mut written_off, mut blocked_ns) = (0u64, 0u64);
        // Frames sent and neither reflected back nor written off.
        let mut in_flight = 0usize;
        let mut last_progress = Instant::now();
        let mut prev = Instant::now();
        let mut was_blocked = false;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if was_blocked {
                blocked_ns += now.duration_since(prev).as_nanos() as u64;
            }
            prev = now;

            // Completed TX frames still hold the frame; only their length needs restoring.
            // SAFETY: completions are frames of this UMEM that this port transmitted.
            let n = unsafe { self.port.complete_batch(&mut self.scratch) };
            for desc in &mut self.scratch[..n] {
                // SAFETY: a completed frame is ours again.
                unsafe { self.umem.data_mut(desc) }.cursor().set_pos(self.frame_len);
            }
            self.tx_free.extend_from_slice(&self.scratch[..n]);
            completed += n as u64;

            // Reflected frames go straight back to the fill ring.
            // SAFETY: received frames are frames of this UMEM, ours until recycled.
            let n = unsafe { self.port.rx_batch(&mut self.scratch) };
            if n > 0 {
                received += n as u64;
                in_flight = in_flight.saturating_sub(n);
                last_progress = now;
                self.rx_spare.extend_from_slice(&self.scratch[..n]);
            }
            self.refill();

            let room = self.window.saturating_sub(in_flight);
            let k = room.min(self.batch).min(self.tx_free.len());
            // Also kick when frames may still wait in the TX ring: copy mode sends a bounded number per kick.
            if k > 0 || completed < sent {
                let from = self.tx_free.len() - k;
                // SAFETY: free TX frames are ours and belong to this port's UMEM.
                let queued = unsafe { self.port.tx_batch(&self.tx_free[from..]) }.context("generator TX wake-up")?;
                self.tx_free.drain(from..from + queued);
                sent += queued as u64;
                in_flight += queued;
            }

            was_blocked = in_flight >= self.window;
            if was_blocked && now.duration_since(last_progress) > STALL {
                written_off += in_flight as u64;
                in_flight = 0;
                last_progress = now;
            }
            counters.sent.store(sent, Ordering::Relaxed);
            counters.completed.store(completed, Ordering::Relaxed);
            counters.received.store(received, Ordering::Relaxed);
            counters.written_off.store(written_off, Ordering::Relaxed);
            counters.blocked_ns.store(blocked_ns, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xlb_stack::wire::{EthernetFrame, Ipv4Packet, UdpPacket};

    #[test]
    fn udp_frame_is_well_formed() {
        let (dst, src) = (EthernetAddress([2, 0, 0, 0, 0, 2]), EthernetAddress([2, 0, 0, 0, 0, 1]));
        for size in [42, 64, 65, 1514] {
            let frame = udp_frame(size, dst, src);
            assert_eq!(frame.len(), size);
            let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
            assert_eq!((eth.dst_addr(), eth.src_addr()), (dst, src));
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!((ip.src_addr(), ip.dst_addr()), (SRC_IP, DST_IP));
            assert_eq!(ip.total_len() as usize, size - ETH_HEADER_LEN);
            let udp = UdpPacket::new_checked(ip.payload()).unwrap();
            assert!(udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
            assert_eq!(udp.dst_port(), UDP_PORTS.1);
        }
    }
}
