//! Whole-table walks for the control plane — connection dumps (`xlbctl conns`) and HA bulk exports — done in
//! chunks across turns, so a table of a million entries never stalls one turn of the datapath. A walk is not a
//! snapshot: entries created, changed or removed while it runs may or may not be in it (as with conntrack
//! dumps).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::conn::{Conn, ConnId};

use super::*;

/// Table slots visited per turn at most.
pub(super) const SLOTS_PER_TURN: usize = 16_384;

/// What a walk collects and where the result goes.
pub(super) enum ScanJob {
    /// Entries matching a filter, up to a limit (a dump).
    Dump {
        filter: ConnFilter,
        limit: usize,
        reply: Sender<Vec<ConnInfo>>,
        found: Vec<ConnInfo>,
    },
    /// Every entry with its remaining time (a bulk export for an HA peer).
    Export {
        reply: Sender<Vec<(Conn, Duration)>>,
        found: Vec<(Conn, Duration)>,
    },
}

/// A walk in progress.
pub(super) struct TableScan {
    job: ScanJob,
    next: usize,
}

/// Walks waiting or in progress, oldest first.
pub(super) type Scans = VecDeque<TableScan>;

impl TableScan {
    pub(super) fn new(job: ScanJob) -> Self {
        TableScan { job, next: 0 }
    }
}

impl Forwarder {
    /// Advances the oldest walk by up to [`SLOTS_PER_TURN`] slots; sends its result once it is complete.
    pub(super) fn scan_step(&mut self, now: Instant) {
        let (scans, conns, listeners, worker) = (&mut self.scans, &self.conns, &self.listeners, self.worker);
        let Some(scan) = scans.front_mut() else { return };
        let end = (scan.next + SLOTS_PER_TURN).min(conns.capacity());
        for id in scan.next..end {
            let Some(c) = conns.live(id as ConnId) else { continue };
            match &mut scan.job {
                ScanJob::Dump {
                    filter, limit, found, ..
                } => {
                    let name = listener_name(listeners, c);
                    if found.len() < *limit && filter.matches(c, name) {
                        found.push(ConnInfo {
                            conn: *c,
                            listener: name.to_string(),
                            expires_in: conns.expires_in(id as ConnId, now),
                            worker,
                        });
                    }
                }
                ScanJob::Export { found, .. } => found.push((*c, conns.expires_in(id as ConnId, now))),
            }
        }
        scan.next = end;
        let complete = match &scan.job {
            ScanJob::Dump { found, limit, .. } => end == conns.capacity() || found.len() >= *limit,
            ScanJob::Export { .. } => end == conns.capacity(),
        };
        if complete {
            if let Some(scan) = scans.pop_front() {
                match scan.job {
                    ScanJob::Dump { reply, found, .. } => {
                        let _ = reply.try_send(found);
                    }
                    ScanJob::Export { reply, found } => {
                        let _ = reply.try_send(found);
                    }
                }
            }
        }
    }
}

/// The name of a connection's listener (empty if its slot is unknown).
pub(super) fn listener_name<'a>(listeners: &'a [Listener], c: &Conn) -> &'a str {
    listeners
        .get(usize::from(c.listener))
        .map_or("", |l| l.config.name.as_str())
}
