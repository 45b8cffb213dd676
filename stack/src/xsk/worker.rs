//! The run-to-completion worker: rx batch → pipeline → tx batch, on one pinned core.
//!
//! A worker owns a UMEM, the ports that share it and a [`Pipeline`]. Each turn of its loop it reclaims
//! completed TX frames, receives a batch per port, offers every frame of it to [`Pipeline::prefetch`] and then
//! runs every frame through the pipeline, sends what the pipeline returned or originated, and tops up the fill
//! rings. No locks, no allocation and no syscalls per packet: the only syscalls are TX/fill wake-ups once per
//! batch when the kernel asks for them, poll(2) when idle, and a statistics read once a second.
//!
//! Frame accounting: every UMEM frame is at any time in exactly one of: the free pool, a fill ring (or the
//! RX ring it feeds), or a TX ring awaiting completion. [`Worker::frames`] reports the three counts, so a test
//! can prove no frame leaks.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xsk_rs::{FrameDesc, Umem};

use crate::config::Idle;
use crate::counters::{BatchHistogram, RingCounters, SharedCounters, WorkerSnapshot};
use crate::drops::DropReason;
use crate::pipeline::{Frame, Pipeline, Verdict};
use crate::xsk::port::Port;

/// How long an adaptive worker keeps spinning (yielding to other threads of its core) after it last received a
/// frame before it sleeps in poll(2). Only received frames count: the frames a worker originates itself (health
/// probes, ARP) and its timers do not keep it spinning, or a few thousand health-checked servers would hold a
/// core busy.
const SPIN_AFTER_RX: Duration = Duration::from_micros(100);
/// Longest sleep, so a stop request is noticed promptly.
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// Longest time between two timer checks.
const TIMER_TICK: Duration = Duration::from_millis(100);
/// How often kernel socket statistics are read (one getsockopt per port).
const KERNEL_STATS_EVERY: Duration = Duration::from_secs(1);

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Name for logs and the thread.
    pub name: String,
    /// Core to pin to, if any.
    pub core: Option<usize>,
    /// Idle strategy.
    pub idle: Idle,
    /// Frames per batch.
    pub batch_size: usize,
    /// Ring size of the ports (the fill ring is kept topped up to this).
    pub ring_size: u32,
}

/// Where the worker's frames are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCounts {
    /// In the free pool.
    pub free: usize,
    /// Given to fill rings (and not yet received back).
    pub in_fill: usize,
    /// Given to TX rings (and not yet completed).
    pub in_tx: usize,
    /// Total UMEM frames.
    pub total: usize,
}

/// A worker: its UMEM, ports and pipeline.
pub struct Worker<P: Pipeline> {
    options: WorkerOptions,
    umem: Umem,
    ports: Vec<Port>,
    pipeline: P,
    free: Vec<FrameDesc>,
    total: usize,
    in_fill: Vec<usize>,
    in_tx: Vec<usize>,
    scratch: Vec<FrameDesc>,
    tx_batches: Vec<Vec<FrameDesc>>,
    rings: RingCounters,
    /// Frames dropped because a TX ring was full.
    tx_ring_full_frames: u64,
    batches: BatchHistogram,
    shared: Arc<SharedCounters>,
    next_timer: Instant,
    next_kernel_stats: Instant,
    /// When a frame was last received (adaptive idle spins for [`SPIN_AFTER_RX`] after it).
    last_rx: Option<Instant>,
}

impl<P: Pipeline> Worker<P> {
    /// A worker over `ports` sharing `umem` whose frames are `frames`.
    pub fn new(options: WorkerOptions, umem: Umem, frames: Vec<FrameDesc>, ports: Vec<Port>, pipeline: P) -> Self {
        let n = ports.len();
        let batch = options.batch_size.max(1);
        let now = Instant::now();
        let mut worker = Worker {
            total: frames.len(),
            free: frames,
            in_fill: vec![0; n],
            in_tx: vec![0; n],
            scratch: vec![FrameDesc::default(); batch.max(options.ring_size as usize)],
            tx_batches: (0..n).map(|_| Vec::with_capacity(batch * (n + 1))).collect(),
            rings: RingCounters::default(),
            tx_ring_full_frames: 0,
            batches: BatchHistogram::default(),
            shared: Arc::new(SharedCounters::default()),
            next_timer: now,
            last_rx: None,
            next_kernel_stats: now,
            options,
            umem,
            ports,
            pipeline,
        };
        // Fill the rings now, so frames arriving before the worker's first turn are not dropped.
        worker.refill();
        worker
    }

    /// The counters this worker publishes (clone the `Arc` before running the worker).
    pub fn counters(&self) -> Arc<SharedCounters> {
        self.shared.clone()
    }

    /// Where the UMEM frames are right now.
    pub fn frames(&self) -> FrameCounts {
        FrameCounts {
            free: self.free.len(),
            in_fill: self.in_fill.iter().sum(),
            in_tx: self.in_tx.iter().sum(),
            total: self.total,
        }
    }

    /// The pipeline.
    pub fn pipeline(&self) -> &P {
        &self.pipeline
    }

    /// The ports.
    pub fn ports(&self) -> &[Port] {
        &self.ports
    }

    /// Runs until `stop` is set, pinned to the configured core. Returns the worker for inspection.
    pub fn run(mut self, stop: &AtomicBool) -> Self {
        if let Some(core) = self.options.core {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                tracing::warn!(worker = %self.options.name, core, "could not pin worker to core");
            }
        }
        tracing::info!(worker = %self.options.name, core = ?self.options.core, ports = self.ports.len(), "worker running");
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if self.poll_once(now) > 0 {
                continue;
            }
            let receiving = self
                .last_rx
                .is_some_and(|t| now.saturating_duration_since(t) < SPIN_AFTER_RX);
            match self.options.idle {
                // Spinning, but yielding the core to any other runnable thread on it between empty turns (the
                // TLS handshake pool, or servers on a shared host; on an isolated core there is none and the
                // yield returns at once). A pure spin took half a core from the handshakes, and doubled the
                // keep-alive p99 of the L7 benchmark, whose servers share the worker's core.
                Idle::Busy => std::thread::yield_now(),
                Idle::Adaptive if receiving => std::thread::yield_now(),
                Idle::Adaptive => self.sleep(now),
            }
        }
        // Connections terminated in the stack end with the process: their peers get an RST now instead of holding
        // them open (a server would keep an idle upstream connection until its own timeout, and the next process
        // could meet it on the same tuple).
        self.pipeline.shutdown(Instant::now());
        let deadline = Instant::now() + Duration::from_millis(200);
        while self.poll_once(Instant::now()) > 0 && Instant::now() < deadline {}
        // What the last turn queued for other threads (hand-offs, HA, sync, access-log lines) still goes out.
        self.pipeline.flush_events();
        // Let in-flight TX complete so the frame accounting settles before the worker is inspected or dropped.
        let deadline = Instant::now() + Duration::from_millis(200);
        while self.in_tx.iter().sum::<usize>() > 0 && Instant::now() < deadline {
            self.flush_and_reclaim();
            std::thread::sleep(Duration::from_millis(1));
        }
        self.publish();
        self
    }

    /// Sleeps in poll(2) on every port until a frame arrives or the next timer (at most [`MAX_SLEEP`]).
    fn sleep(&mut self, now: Instant) {
        let mut timeout = self.next_timer.saturating_duration_since(now).min(MAX_SLEEP);
        if self.in_tx.iter().any(|n| *n > 0) {
            // poll(2) wakes for received frames only; completed TX frames are reclaimed on the next turn.
            timeout = timeout.min(Duration::from_millis(1));
        }
        let mut fds: [libc::pollfd; 64] = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; 64];
        for (pfd, port) in fds.iter_mut().zip(&self.ports) {
            pfd.fd = port.rx.fd().as_raw_fd();
            pfd.events = libc::POLLIN;
        }
        let mut n = self.ports.len().min(63);
        let wake = self.pipeline.wake_fd();
        if let Some(fd) = wake {
            fds[n] = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            n += 1;
        }
        // SAFETY: `fds[..n]` are initialised pollfd structs.
        unsafe { libc::poll(fds.as_mut_ptr(), n as libc::nfds_t, timeout.as_millis() as i32) };
        if let Some(fd) = wake {
            if fds[n - 1].revents != 0 {
                // Cleared before the turn that takes the work, so a signal after this is not lost.
                crate::wake::Wake::clear(fd);
            }
        }
    }

    /// One turn of the loop. Returns the number of frames received, sent or reclaimed (0 = idle).
    pub fn poll_once(&mut self, now: Instant) -> usize {
        let mut work = self.reclaim();
        let mut received = 0;
        for p in 0..self.ports.len() {
            received += self.receive(now, p);
        }
        if received > 0 {
            self.last_rx = Some(now);
        }
        // What the batch queued for other threads leaves now, never from inside packet processing.
        self.pipeline.flush_events();
        work += received;
        work += self.originate(now);
        work += self.flush_tx();
        self.refill();
        if now >= self.next_timer {
            self.pipeline.handle_timeout(now);
            let tick = now + TIMER_TICK;
            self.next_timer = self.pipeline.poll_timeout().map_or(tick, |t| t.min(tick));
        }
        if now >= self.next_kernel_stats {
            self.read_kernel_stats();
            self.next_kernel_stats = now + KERNEL_STATS_EVERY;
        }
        if work > 0 {
            self.batches.record(now.elapsed().as_micros() as u64);
            self.publish();
        }
        work
    }

    fn flush_and_reclaim(&mut self) {
        self.flush_tx();
        self.reclaim();
    }

    /// Moves completed TX frames back to the free pool.
    fn reclaim(&mut self) -> usize {
        let mut total = 0;
        for p in 0..self.ports.len() {
            if self.in_tx[p] == 0 {
                continue;
            }
            // SAFETY: the completion ring hands back frames of this worker's UMEM that the TX ring owned.
            let n = unsafe { self.ports[p].comp.consume(&mut self.scratch) };
            self.free.extend_from_slice(&self.scratch[..n]);
            self.in_tx[p] -= n;
            total += n;
        }
        total
    }

    /// Receives one batch on port `p` and runs it through the pipeline.
    fn receive(&mut self, now: Instant, p: usize) -> usize {
        let batch = self.options.batch_size;
        // SAFETY: frames consumed from the RX ring belong to this UMEM and are owned by us until recycled.
        let n = unsafe { self.ports[p].rx.consume(&mut self.scratch[..batch]) };
        self.in_fill[p] -= n;
        // Offer the whole batch to the pipeline first, so the cache misses of its lookups overlap.
        for desc in &self.scratch[..n] {
            // SAFETY: `desc` is a received frame of this UMEM that we own; nothing writes it while this shared
            // view lives (it ends before the frame is processed below).
            let data = unsafe { self.umem.data(desc) };
            self.pipeline.prefetch(p, data.contents());
        }
        for i in 0..n {
            let mut desc = self.scratch[i];
            let len = desc.lengths().data();
            self.rings.rx_frames += 1;
            self.rings.rx_bytes += len as u64;
            // SAFETY: `desc` is a received frame we own; no other reference to its data exists.
            let mut data = unsafe { self.umem.data_mut(&mut desc) };
            // Expose the frame's whole capacity so the pipeline can grow the packet, then set the final length.
            data.cursor().set_pos(usize::MAX);
            let mut frame = Frame::new(data.contents_mut(), len);
            let verdict = self.pipeline.process(now, p, &mut frame);
            let out_len = frame.len();
            data.cursor().set_pos(out_len);
            match verdict {
                Verdict::Transmit(q) if q < self.ports.len() => self.tx_batches[q].push(desc),
                Verdict::Transmit(_) | Verdict::Consumed | Verdict::Drop(_) => self.free.push(desc),
            }
        }
        n
    }

    /// Pulls frames the pipeline originates into free frames, up to one batch.
    fn originate(&mut self, now: Instant) -> usize {
        let mut sent = 0;
        while sent < self.options.batch_size {
            let Some(mut desc) = self.free.pop() else {
                break;
            };
            // SAFETY: a free frame is owned by us.
            let mut data = unsafe { self.umem.data_mut(&mut desc) };
            data.cursor().set_pos(usize::MAX);
            match self.pipeline.poll_transmit(now, data.contents_mut()) {
                Some((q, len)) if q < self.ports.len() => {
                    data.cursor().set_pos(len);
                    self.tx_batches[q].push(desc);
                    sent += 1;
                }
                Some(_) | None => {
                    self.free.push(desc);
                    break;
                }
            }
        }
        sent
    }

    /// Hands each port's pending TX frames to its TX ring; frames that do not fit are dropped (counted).
    fn flush_tx(&mut self) -> usize {
        let mut total = 0;
        let ring = self.options.ring_size;
        for q in 0..self.ports.len() {
            let pending = self.tx_batches[q].len();
            let port = &mut self.ports[q];
            if pending > 0 {
                let room = (port.tx.nb_free(pending as u32) as usize).min(pending);
                // SAFETY: these frames are ours and are handed to the kernel until they come back on the
                // completion ring.
                let sent = unsafe { port.tx.produce(&self.tx_batches[q][..room]) };
                for desc in &self.tx_batches[q][..sent] {
                    self.rings.tx_bytes += desc.lengths().data() as u64;
                }
                self.rings.tx_frames += sent as u64;
                self.in_tx[q] += sent;
                if sent < pending {
                    self.rings.tx_ring_full += 1;
                    self.tx_ring_full_frames += (pending - sent) as u64;
                    self.free.extend_from_slice(&self.tx_batches[q][sent..]);
                }
                self.tx_batches[q].clear();
                total += sent;
            }
            // Kick the kernel whenever frames wait in the TX ring, not only when new ones were added: copy-mode
            // drivers (veth) send only part of the ring per wake-up, and the rest would wait for more traffic.
            let waiting = self.in_tx[q] > 0 && port.tx.nb_free_exact() < ring;
            if (pending > 0 || waiting) && port.tx.needs_wakeup() {
                if let Err(e) = port.tx.wakeup() {
                    tracing::warn!(iface = %port.ifname, queue = port.queue, error = %e, "TX wakeup failed");
                }
            }
        }
        total
    }

    /// Tops up every fill ring from the free pool.
    fn refill(&mut self) {
        let ring = self.options.ring_size as usize;
        for p in 0..self.ports.len() {
            let want = ring.saturating_sub(self.in_fill[p]);
            if want == 0 {
                continue;
            }
            if self.free.is_empty() {
                self.rings.fill_starved += 1;
                return;
            }
            let port = &mut self.ports[p];
            let k = want.min(self.free.len()).min(port.fill.nb_free(want as u32) as usize);
            let from = self.free.len() - k;
            // SAFETY: free frames are ours; the fill ring owns them until they come back on the RX ring.
            let given = unsafe { port.fill.produce(&self.free[from..]) };
            self.free.truncate(self.free.len() - given);
            self.in_fill[p] += given;
            if given > 0 && port.fill.needs_wakeup() {
                let fd = port.rx.fd_mut();
                let _ = port.fill.wakeup(fd, 0);
            }
        }
    }

    fn read_kernel_stats(&mut self) {
        let (mut ring_full, mut fill_empty, mut dropped) = (0, 0, 0);
        for port in &self.ports {
            if let Ok(s) = port.rx.fd().xdp_statistics() {
                ring_full += s.rx_ring_full();
                fill_empty += s.rx_fill_ring_empty_descs();
                dropped += s.rx_dropped();
            }
        }
        self.rings.kernel_rx_ring_full = ring_full;
        self.rings.kernel_fill_ring_empty = fill_empty;
        self.rings.kernel_rx_dropped = dropped;
    }

    fn publish(&mut self) {
        let mut stack = self.pipeline.counters().clone();
        stack.drops[DropReason::TxRingFull.index()] += self.tx_ring_full_frames;
        self.shared.publish(&WorkerSnapshot {
            rings: self.rings.clone(),
            stack,
            free_frames: (self.free.len() + self.in_fill.iter().sum::<usize>()) as u64,
            total_frames: self.total as u64,
            batches: self.batches,
        });
    }
}
