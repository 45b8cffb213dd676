//! Frame accounting of a real worker: after traffic has passed and the worker has stopped, every UMEM frame
//! is back in the free pool or the fill ring, none is lost in a TX ring.
//!
//! Lab: namespaces `gen` and `dut` joined by a veth (`gen0` <-> `dut0`, 198.18.250.0/24). A worker runs in
//! `dut` on a thread that entered the namespace, with an XDP filter claiming 198.18.250.12, an address no
//! kernel owns. Two generators send to it from `gen`, each in bursts far below the ring sizes, waiting for
//! the worker to count every burst, so no ring overflows and every frame must arrive:
//!
//! - a kernel UDP socket, through a static ARP entry for `dut0`'s MAC: frames trickle in a few at a time;
//! - an AF_XDP socket on `gen0` that queues a whole burst at once: the worker gets full batches, and its
//!   copy-mode transmissions meet the veth's back-pressure (the kernel leaves frames in the TX ring).
//!
//! Needs root, like every lab test.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use xlb_stack::config::{Idle, XdpMode, ZeroCopy};
use xlb_stack::counters::{SharedCounters, StackCounters, WorkerSnapshot};
use xlb_stack::drops::DropReason;
use xlb_stack::pipeline::{Frame, Pipeline, PortId, Verdict};
use xlb_stack::reflect::Reflector;
use xlb_stack::wire::build::{self, DEFAULT_TTL, ETHERTYPE_IPV4};
use xlb_stack::wire::{EthernetAddress, ETH_HEADER_LEN, IPV4_HEADER_LEN};
use xlb_stack::xsk::filter::{AddrKind, AttachedMode, FilterStats, XdpFilter};
use xlb_stack::xsk::port::{create_umem, open_port, FrameDesc, PortSpec};
use xlb_stack::xsk::worker::{FrameCounts, Worker, WorkerOptions};
use xlb_tests::lab::{wait_until, Lab, Netns};

/// Frames sent per test.
const N: u64 = 20_000;
/// Datagrams the kernel sender sends before waiting for the worker to count them; far below the ring size.
const BURST: u64 = 64;
/// Frames the AF_XDP sender queues at once (also its ring size and UMEM frames): half the worker's ring,
/// eight worker batches.
const XSK_BURST: u64 = 512;
/// Longest the AF_XDP sender keeps waking the kernel for one burst.
const MAX_KICKS: u32 = 100_000;
/// UMEM frames of the worker.
const UMEM_FRAMES: u32 = 4096;
/// Ring size of the worker.
const RING: u32 = 1024;
/// Frames per batch of the worker.
const BATCH: usize = 64;
/// Address only the DUT's XDP filter owns.
const DUT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 12);
/// Bound of every wait: setup, each burst, the final drain.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The worker's rx counter must stay unchanged this long to count as settled.
const QUIET: Duration = Duration::from_millis(200);

/// Drops every frame: the frames must still all return to the pool.
#[derive(Default)]
struct DropAll {
    counters: StackCounters,
}

impl Pipeline for DropAll {
    fn process(&mut self, _now: Instant, _port: PortId, _frame: &mut Frame<'_>) -> Verdict {
        self.counters.drop(DropReason::NotOurAddress);
        Verdict::Drop(DropReason::NotOurAddress)
    }

    fn poll_transmit(&mut self, _now: Instant, _buf: &mut [u8]) -> Option<(PortId, usize)> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn counters(&self) -> &StackCounters {
        &self.counters
    }
}

/// What a run produced.
struct Outcome {
    /// Frame counts of the worker before it ran.
    before: FrameCounts,
    /// Frame counts of the worker after it stopped.
    after: FrameCounts,
    /// The worker's counters after it stopped.
    counters: WorkerSnapshot,
    /// The DUT filter's verdicts.
    filter: FilterStats,
    /// Datagrams the generator sent.
    sent: u64,
}

/// Wraps the pipeline under test and raises `started` at its first timer call. A worker makes that call at
/// the end of its first turn, after topping up its fill ring: from then on frames are received, not dropped
/// for want of fill-ring entries.
struct Started<P> {
    inner: P,
    started: Arc<AtomicBool>,
}

impl<P: Pipeline> Pipeline for Started<P> {
    fn prefetch(&mut self, port: PortId, frame: &[u8]) {
        self.inner.prefetch(port, frame);
    }

    fn process(&mut self, now: Instant, port: PortId, frame: &mut Frame<'_>) -> Verdict {
        self.inner.process(now, port, frame)
    }

    fn flush_events(&mut self) {
        self.inner.flush_events();
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(PortId, usize)> {
        self.inner.poll_transmit(now, buf)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.inner.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.started.store(true, Ordering::Release);
        self.inner.handle_timeout(now);
    }

    fn counters(&self) -> &StackCounters {
        self.inner.counters()
    }
}

/// How the generator sends.
#[derive(Debug, Clone, Copy)]
enum Sender {
    /// A kernel UDP socket.
    Kernel,
    /// An AF_XDP socket, a burst of [`XSK_BURST`] frames at a time.
    Xsk,
}

/// Sets the flag when dropped, so the worker stops however the test leaves the scope.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Builds the lab, runs a worker with `pipeline` in `dut`, sends [`N`] frames from `gen` with `sender`,
/// stops the worker and returns what happened.
fn run<P: Pipeline>(test: &str, pipeline: P, sender: Sender) -> Result<Outcome> {
    let lab = Lab::new(test)?;
    let gen = lab.netns("gen")?;
    let dut = lab.netns("dut")?;
    lab.veth((&gen, "gen0"), (&dut, "dut0"))?;
    gen.addr("gen0", "198.18.250.1/24")?;
    dut.addr("dut0", "198.18.250.2/24")?;
    // Reflected frames reach gen's kernel (addressed to 198.18.250.12, not its own): never route them back.
    gen.sysctl("net.ipv4.ip_forward", "0")?;
    let macs = (gen.mac("gen0")?, dut.mac("dut0")?);
    let dut_mac = macs.1.map(|b| format!("{b:02x}")).join(":");
    gen.ip(&["neigh", "add", &DUT_IP.to_string(), "lladdr", &dut_mac, "dev", "gen0"])?;

    let stop = AtomicBool::new(false);
    let started = Arc::new(AtomicBool::new(false));
    let pipeline = Started {
        inner: pipeline,
        started: Arc::clone(&started),
    };
    // Scoped threads are joined before the scope returns, also on failure, so they have left the namespaces
    // (closing the socket and detaching the filter there) before `lab` deletes them.
    thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let (ready_tx, ready_rx) = mpsc::channel();
        let worker = s.spawn(|| dut_side(&dut, pipeline, &stop, ready_tx));
        let counters = match ready_rx.recv_timeout(TIMEOUT) {
            Ok(counters) => counters,
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                return Err(join(worker).err().unwrap_or_else(|| anyhow!("DUT not ready")));
            }
        };
        wait_until(TIMEOUT, "the worker to start", || started.load(Ordering::Acquire))?;
        let (gen, shared) = (&gen, Arc::clone(&counters));
        let sent = s
            .spawn(move || match sender {
                Sender::Kernel => send_udp(gen, &shared),
                Sender::Xsk => send_xsk(gen, macs, &shared),
            })
            .join()
            .map_err(|_| anyhow!("sender panicked"))??;
        settle(&counters)?;
        stop.store(true, Ordering::Relaxed);
        let (before, after, filter) = join(worker)?;
        Ok(Outcome {
            before,
            after,
            counters: counters.snapshot(),
            filter,
            sent,
        })
    })
}

/// The DUT thread: enters `ns`, runs a worker on `dut0` until `stop`, returns its frame counts before and
/// after and the filter's verdicts.
fn dut_side<P: Pipeline>(
    ns: &Netns,
    pipeline: P,
    stop: &AtomicBool,
    ready: mpsc::Sender<Arc<SharedCounters>>,
) -> Result<(FrameCounts, FrameCounts, FilterStats)> {
    ns.enter_current_thread()?;
    let filter = XdpFilter::attach("dut0", XdpMode::Auto)?;
    let (umem, descs) = create_umem(UMEM_FRAMES, RING)?;
    let spec = PortSpec {
        ifname: "dut0".into(),
        queue: 0,
        zero_copy: ZeroCopy::Auto,
        generic_xdp: filter.mode() == AttachedMode::Generic,
    };
    let port = open_port(&umem, &spec, RING)?;
    filter.register_socket(0, port.fd())?;
    filter.add_address(DUT_IP, AddrKind::Local)?;
    let options = WorkerOptions {
        name: "dut".into(),
        core: None,
        idle: Idle::Adaptive,
        batch_size: BATCH,
        ring_size: RING,
    };
    let worker = Worker::new(options, umem, descs, vec![port], pipeline);
    let before = worker.frames();
    ready.send(worker.counters()).map_err(|_| anyhow!("test thread gone"))?;
    let worker = worker.run(stop);
    let after = worker.frames();
    let stats = filter.stats()?;
    // Close the socket, then detach the filter, both in this namespace.
    drop(worker);
    drop(filter);
    Ok((before, after, stats))
}

/// The generator thread: enters `gen`'s namespace and sends [`N`] UDP datagrams to [`DUT_IP`] in bursts
/// of [`BURST`], each time waiting until the worker has received all sent so far. Returns the count sent.
fn send_udp(gen: &Netns, counters: &SharedCounters) -> Result<u64> {
    gen.enter_current_thread()?;
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::new(198, 18, 250, 1), 0))?;
    let to = SocketAddrV4::new(DUT_IP, 9);
    // 14 + 20 + 8 + 18 = 60-byte frames (64 on a wire, with the FCS veth does not have).
    let payload = [0x5a_u8; 18];
    let mut sent = 0;
    while sent < N {
        for _ in 0..BURST.min(N - sent) {
            socket.send_to(&payload, to).context("sending a datagram")?;
            sent += 1;
        }
        received(counters, sent)?;
    }
    Ok(sent)
}

/// The generator thread: enters `gen`'s namespace, opens an AF_XDP socket on `gen0` and sends [`N`]
/// frames to [`DUT_IP`], queueing [`XSK_BURST`] at once and waking the kernel until all are sent, then
/// waiting until the worker has received them. `macs` are `gen0`'s and `dut0`'s. Returns the count sent.
///
/// `gen0` gets an XDP filter that owns no address, so reflected frames pass to `gen`'s kernel, which drops
/// them. The program is there for its side effect, as in `xlb-perf xdp-loop`: the veth then delivers to
/// `gen0` through a bounded NAPI ring that pushes back on the DUT's transmissions when full.
fn send_xsk(gen: &Netns, macs: ([u8; 6], [u8; 6]), counters: &SharedCounters) -> Result<u64> {
    gen.enter_current_thread()?;
    let _filter = XdpFilter::attach("gen0", XdpMode::Auto)?;
    let ring = XSK_BURST as u32;
    let (umem, mut free) = create_umem(ring, ring)?;
    let spec = PortSpec {
        ifname: "gen0".into(),
        queue: 0,
        zero_copy: ZeroCopy::Off,
        generic_xdp: true,
    };
    let mut port = open_port(&umem, &spec, ring)?;
    let frame = udp_frame(EthernetAddress(macs.1), EthernetAddress(macs.0));
    for desc in &mut free {
        // SAFETY: the frame is ours: nothing has been given to the kernel yet.
        let mut data = unsafe { umem.data_mut(desc) };
        data.cursor().set_pos(frame.len());
        data.contents_mut().copy_from_slice(&frame);
    }
    let mut scratch = vec![FrameDesc::default(); XSK_BURST as usize];
    let mut sent = 0;
    while sent < N {
        let burst = XSK_BURST.min(N - sent) as usize;
        // Frames of the burst not yet on the TX ring, and frames the kernel has sent.
        let (mut to_queue, mut completed) = (burst, 0);
        let mut kicks = 0;
        let deadline = Instant::now() + TIMEOUT;
        while completed < burst {
            if kicks == MAX_KICKS || Instant::now() > deadline {
                return Err(anyhow!("the kernel sent {completed} of {burst} frames of a burst"));
            }
            kicks += 1;
            // Queue what is left of the burst (once all is queued, this only wakes the kernel). Every free
            // frame holds the same frame, so any will do.
            let from = free.len() - to_queue;
            // SAFETY: free frames are ours and belong to this port's UMEM.
            let queued = unsafe { port.tx_batch(&free[from..]) }?;
            free.drain(from..from + queued);
            to_queue -= queued;
            // SAFETY: completions are frames of this UMEM that this port transmitted.
            let n = unsafe { port.complete_batch(&mut scratch) };
            for desc in &mut scratch[..n] {
                // SAFETY: a completed frame is ours again; it still holds the frame, only its length is reset.
                unsafe { umem.data_mut(desc) }.cursor().set_pos(frame.len());
            }
            free.extend_from_slice(&scratch[..n]);
            completed += n;
        }
        sent += burst as u64;
        received(counters, sent)?;
    }
    Ok(sent)
}

/// A 60-byte Ethernet/IPv4/UDP frame to [`DUT_IP`] port 9 (UDP checksum 0: none, which IPv4 allows).
fn udp_frame(dst: EthernetAddress, src: EthernetAddress) -> Vec<u8> {
    let udp_len = 8 + 18;
    let mut frame = vec![0u8; ETH_HEADER_LEN + IPV4_HEADER_LEN + udp_len];
    build::ethernet(&mut frame, dst, src, ETHERTYPE_IPV4);
    let src_ip = Ipv4Addr::new(198, 18, 250, 1);
    build::ipv4_header(&mut frame[ETH_HEADER_LEN..], src_ip, DUT_IP, 17, udp_len, DEFAULT_TTL);
    let udp = &mut frame[ETH_HEADER_LEN + IPV4_HEADER_LEN..];
    udp[0..2].copy_from_slice(&9u16.to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    frame
}

/// Waits until the worker has received `sent` frames.
fn received(counters: &SharedCounters, sent: u64) -> Result<()> {
    wait_until(TIMEOUT, &format!("the worker to receive {sent} frames"), || {
        counters.snapshot().rings.rx_frames >= sent
    })
    .with_context(|| format!("worker counters: {:?}", counters.snapshot()))
}

/// Waits until the worker's rx counter stops growing.
fn settle(counters: &SharedCounters) -> Result<()> {
    let mut last = (counters.snapshot().rings.rx_frames, Instant::now());
    wait_until(TIMEOUT, "the worker's rx counter to settle", || {
        let rx = counters.snapshot().rings.rx_frames;
        if rx != last.0 {
            last = (rx, Instant::now());
        }
        last.1.elapsed() >= QUIET
    })
}

/// Joins a scoped thread, turning a panic into an error.
fn join<T>(handle: thread::ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    handle.join().map_err(|_| anyhow!("DUT thread panicked"))?
}

/// Checks what holds for every pipeline: every frame sent arrived and every UMEM frame is back.
fn check_frames(out: &Outcome) {
    let rings = &out.counters.rings;
    assert_eq!(out.sent, N);
    assert_eq!(
        rings.rx_frames, N,
        "the worker received {} of {N} frames; counters {:?}",
        rings.rx_frames, out.counters
    );
    assert_eq!(out.filter.to_socket, N, "filter verdicts {:?}", out.filter);
    assert_eq!(
        (out.before.free + out.before.in_fill, out.before.in_tx),
        (out.before.total, 0),
        "frames before running (the fill ring is filled at construction): {:?}",
        out.before
    );
    assert_eq!(out.after.total, UMEM_FRAMES as usize);
    assert_eq!(out.after.in_tx, 0, "frames stuck in TX: {:?}", out.after);
    assert_eq!(
        out.after.free + out.after.in_fill,
        out.after.total,
        "frames leaked: {:?}",
        out.after
    );
    assert_eq!(
        out.counters.free_frames, out.counters.total_frames,
        "published free frames"
    );
}

/// Every received frame was either sent back or counted as a TX-ring-full drop (veth may push back when a
/// sender blasts whole batches); none vanished.
fn check_reflected(out: &Outcome) {
    check_frames(out);
    let rings = &out.counters.rings;
    let tx_full = out.counters.stack.drops_of(xlb_stack::drops::DropReason::TxRingFull);
    assert_eq!(
        rings.tx_frames + tx_full,
        rings.rx_frames,
        "counters {:?}",
        out.counters
    );
    assert!(rings.tx_frames > 0, "nothing was reflected");
}

fn check_dropped(out: &Outcome) {
    check_frames(out);
    let c = &out.counters;
    assert_eq!(c.rings.tx_frames, 0);
    assert_eq!(c.stack.drops_of(DropReason::NotOurAddress), N);
}

#[test]
fn reflector_returns_every_frame() {
    let out = run("frame_accounting_reflector", Reflector::default(), Sender::Kernel).unwrap();
    check_reflected(&out);
}

#[test]
fn dropping_pipeline_returns_every_frame() {
    let out = run("frame_accounting_drop", DropAll::default(), Sender::Kernel).unwrap();
    check_dropped(&out);
}

#[test]
fn reflector_returns_every_frame_after_full_batches() {
    let out = run("frame_accounting_reflector_xsk", Reflector::default(), Sender::Xsk).unwrap();
    check_reflected(&out);
}

#[test]
fn dropping_pipeline_returns_every_frame_after_full_batches() {
    let out = run("frame_accounting_drop_xsk", DropAll::default(), Sender::Xsk).unwrap();
    check_dropped(&out);
}
