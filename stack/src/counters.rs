//! Datapath counters: what the sans-IO stack counts, and how a worker publishes them to readers.
//!
//! The stack counts into plain integers ([`StackCounters`]); the worker adds its ring-level counts and stores
//! the totals into [`SharedCounters`] once per batch. Each shared counter has one writer (its worker), so a
//! relaxed store suffices and readers (the control thread) never stop the datapath.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::drops::DropReason;

/// Counters of the sans-IO stack (owned by one worker, plain integers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackCounters {
    /// Drops by [`DropReason`] id (every crate's reasons; see [`crate::drops`]).
    pub drops: [u64; DropReason::CAPACITY],
    /// ARP requests for our addresses answered.
    pub arp_replies: u64,
    /// ARP requests sent to resolve neighbours.
    pub arp_requests: u64,
    /// ICMP echo requests answered.
    pub icmp_echo_replies: u64,
    /// TCP resets sent.
    pub tcp_resets: u64,
    /// ICMP destination-unreachable messages sent.
    pub icmp_unreachables: u64,
    /// ICMP time-exceeded messages sent (packets to forward whose TTL ran out).
    pub icmp_time_exceeded: u64,
    /// Fragmented IPv4 datagrams reassembled.
    pub reassembled: u64,
}

impl Default for StackCounters {
    fn default() -> Self {
        StackCounters {
            drops: [0; DropReason::CAPACITY],
            arp_replies: 0,
            arp_requests: 0,
            icmp_echo_replies: 0,
            tcp_resets: 0,
            icmp_unreachables: 0,
            icmp_time_exceeded: 0,
            reassembled: 0,
        }
    }
}

impl StackCounters {
    /// Counts one drop.
    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason.index()] += 1;
    }

    /// The count for one drop reason.
    pub fn drops_of(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }
}

/// Counters of the worker's rings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RingCounters {
    /// Frames received.
    pub rx_frames: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames handed to a TX ring.
    pub tx_frames: u64,
    /// Bytes handed to a TX ring.
    pub tx_bytes: u64,
    /// Batches in which the TX ring could not take every frame.
    pub tx_ring_full: u64,
    /// Times the fill ring could not be topped up because no frame was free.
    pub fill_starved: u64,
    /// Frames the kernel dropped because the RX ring was full (XDP_STATISTICS).
    pub kernel_rx_ring_full: u64,
    /// Frames the kernel dropped for lack of fill-ring entries (XDP_STATISTICS).
    pub kernel_fill_ring_empty: u64,
    /// Frames the kernel dropped for other reasons (XDP_STATISTICS).
    pub kernel_rx_dropped: u64,
}

/// Buckets of the batch-duration histogram: bucket `i` counts turns that took at most 2^i µs (the last bucket
/// everything longer).
pub const BATCH_BUCKETS: usize = 18;

/// Histogram of how long a worker's turns with work took (rx batch → pipeline → tx batch): the datapath's own
/// latency contribution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchHistogram {
    /// Counts per bucket (not cumulative).
    pub buckets: [u64; BATCH_BUCKETS],
    /// Sum of all durations, in µs.
    pub sum_us: u64,
}

impl BatchHistogram {
    /// Records one turn of `us` microseconds.
    #[inline]
    pub fn record(&mut self, us: u64) {
        let bucket = (64 - us.saturating_sub(1).leading_zeros()) as usize;
        self.buckets[bucket.min(BATCH_BUCKETS - 1)] += 1;
        self.sum_us += us;
    }

    /// Upper bound of bucket `i` in µs (`None` for the last, unbounded one).
    pub fn bound_us(i: usize) -> Option<u64> {
        (i + 1 < BATCH_BUCKETS).then(|| 1u64 << i)
    }
}

/// A snapshot of one worker's counters, as read by the control thread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerSnapshot {
    /// Ring-level counters.
    pub rings: RingCounters,
    /// Stack counters.
    pub stack: StackCounters,
    /// UMEM frames currently owned by userspace (free pool and fill ring) — the leak check.
    pub free_frames: u64,
    /// UMEM frames in total.
    pub total_frames: u64,
    /// Durations of turns with work.
    pub batches: BatchHistogram,
}

const RING_FIELDS: usize = 9;
const STACK_FIELDS: usize = 7;
const HIST_AT: usize = RING_FIELDS + STACK_FIELDS + DropReason::CAPACITY + 2;
const SLOTS: usize = HIST_AT + BATCH_BUCKETS + 1;

/// One worker's counters, written by the worker with relaxed stores and read by anyone.
#[derive(Debug)]
pub struct SharedCounters {
    slots: [AtomicU64; SLOTS],
}

impl Default for SharedCounters {
    fn default() -> Self {
        SharedCounters {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl SharedCounters {
    /// Publishes a snapshot (called by the owning worker only).
    pub fn publish(&self, s: &WorkerSnapshot) {
        let r = &s.rings;
        let st = &s.stack;
        let values = [
            r.rx_frames,
            r.rx_bytes,
            r.tx_frames,
            r.tx_bytes,
            r.tx_ring_full,
            r.fill_starved,
            r.kernel_rx_ring_full,
            r.kernel_fill_ring_empty,
            r.kernel_rx_dropped,
            st.arp_replies,
            st.arp_requests,
            st.icmp_echo_replies,
            st.tcp_resets,
            st.icmp_unreachables,
            st.icmp_time_exceeded,
            st.reassembled,
        ];
        for (slot, v) in self.slots.iter().zip(values.iter().chain(st.drops.iter())) {
            slot.store(*v, Relaxed);
        }
        self.slots[HIST_AT - 2].store(s.free_frames, Relaxed);
        self.slots[HIST_AT - 1].store(s.total_frames, Relaxed);
        for (slot, v) in self.slots[HIST_AT..]
            .iter()
            .zip(s.batches.buckets.iter().chain([&s.batches.sum_us]))
        {
            slot.store(*v, Relaxed);
        }
    }

    /// Reads the latest published snapshot.
    pub fn snapshot(&self) -> WorkerSnapshot {
        let v: Vec<u64> = self.slots.iter().map(|s| s.load(Relaxed)).collect();
        let mut drops = [0; DropReason::CAPACITY];
        drops.copy_from_slice(&v[RING_FIELDS + STACK_FIELDS..RING_FIELDS + STACK_FIELDS + DropReason::CAPACITY]);
        WorkerSnapshot {
            rings: RingCounters {
                rx_frames: v[0],
                rx_bytes: v[1],
                tx_frames: v[2],
                tx_bytes: v[3],
                tx_ring_full: v[4],
                fill_starved: v[5],
                kernel_rx_ring_full: v[6],
                kernel_fill_ring_empty: v[7],
                kernel_rx_dropped: v[8],
            },
            stack: StackCounters {
                drops,
                arp_replies: v[9],
                arp_requests: v[10],
                icmp_echo_replies: v[11],
                tcp_resets: v[12],
                icmp_unreachables: v[13],
                icmp_time_exceeded: v[14],
                reassembled: v[15],
            },
            free_frames: v[HIST_AT - 2],
            total_frames: v[HIST_AT - 1],
            batches: BatchHistogram {
                buckets: std::array::from_fn(|i| v[HIST_AT + i]),
                sum_us: v[SLOTS - 1],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_then_snapshot_round_trips_every_field() {
        let mut s = WorkerSnapshot {
            rings: RingCounters {
                rx_frames: 1,
                rx_bytes: 2,
                tx_frames: 3,
                tx_bytes: 4,
                tx_ring_full: 5,
                fill_starved: 6,
                kernel_rx_ring_full: 7,
                kernel_fill_ring_empty: 8,
                kernel_rx_dropped: 9,
            },
            stack: StackCounters {
                arp_replies: 10,
                arp_requests: 11,
                icmp_echo_replies: 12,
                tcp_resets: 13,
                icmp_unreachables: 14,
                icmp_time_exceeded: 17,
                reassembled: 18,
                ..Default::default()
            },
            free_frames: 15,
            total_frames: 16,
            batches: BatchHistogram::default(),
        };
        for us in [1, 2, 3, 900, 1_000_000] {
            s.batches.record(us);
        }
        for (i, d) in s.stack.drops.iter_mut().enumerate() {
            *d = 100 + i as u64;
        }
        let shared = SharedCounters::default();
        shared.publish(&s);
        assert_eq!(shared.snapshot(), s);
    }

    #[test]
    fn batch_histogram_buckets_by_powers_of_two() {
        let mut h = BatchHistogram::default();
        for us in [0, 1, 2, 3, 4, 5, 1024, 1025] {
            h.record(us);
        }
        // <=1: 0 and 1; <=2: 2; <=4: 3, 4; <=8: 5; <=1024: 1024; <=2048: 1025.
        assert_eq!(&h.buckets[..4], &[2, 1, 2, 1]);
        assert_eq!((h.buckets[10], h.buckets[11]), (1, 1));
        assert_eq!(h.sum_us, 1 + 2 + 3 + 4 + 5 + 1024 + 1025);
        h.record(u64::MAX / 2);
        assert_eq!(
            h.buckets[BATCH_BUCKETS - 1],
            1,
            "everything long lands in the last bucket"
        );
        assert_eq!(BatchHistogram::bound_us(3), Some(8));
        assert_eq!(BatchHistogram::bound_us(BATCH_BUCKETS - 1), None);
    }
}
