//! Listeners at run time: their servers' weights, counts and health (from the shared health board), and the
//! schedulers that pick among them. Maglev tables are not built here: they come with the configuration and
//! after every health change from the control side ([`crate::sched::shared`]), the same `Arc` on every worker.

use std::time::Instant;

use crate::config::ListenerConfig;
use crate::conn::Forwarding;
use crate::layout::ListenerSlot;
use crate::sched::{MaglevHash, MaglevTable, MaglevTables, Scheduler, SchedulerKind, ServerView};

use super::synproxy::Guard;
use super::*;

/// A listener at run time.
pub(super) struct Listener {
    pub(super) config: ListenerConfig,
    pub(super) removed: bool,
    pub(super) servers: Vec<ServerView>,
    /// Per server slot: removed from the group.
    pub(super) removed_servers: Vec<bool>,
    /// Per server slot: its health target on the board.
    pub(super) targets: Vec<Option<usize>>,
    pub(super) scheduler: Scheduler,
    /// DR listeners only: the Maglev table that sends packets of flows without a table entry to the same
    /// server on every worker and node (FULLNAT cannot forward without an entry, so it needs none). Shared.
    pub(super) maglev: Option<Arc<MaglevTable>>,
    /// Connection entries of this listener on this worker (its per-listener cap counts them).
    pub(super) entries: u32,
    /// Of which half-open (SYN_RECV): what switches an `auto` SYN proxy on.
    pub(super) half_open: u32,
    /// The SYN proxy's state for this listener on this worker.
    pub(super) guard: Guard,
}

impl Listener {
    /// Listener slot `slot` with its Maglev table (if it uses one) from `table`.
    pub(super) fn from_slot(slot: &ListenerSlot, table: Option<&Arc<MaglevTable>>) -> Listener {
        let servers: Vec<ServerView> = slot
            .servers
            .iter()
            .map(|s| ServerView {
                addr: s.addr,
                weight: s.weight,
                healthy: true,
                active: 0,
                inactive: 0,
            })
            .collect();
        Listener {
            scheduler: scheduler(slot.config.scheduler, &servers, table),
            maglev: stateless_table(slot.config.forwarding, table),
            config: slot.config.clone(),
            removed: slot.removed,
            removed_servers: slot.servers.iter().map(|s| s.removed).collect(),
            targets: slot.servers.iter().map(|s| s.target).collect(),
            servers,
            entries: 0,
            half_open: 0,
            guard: Guard::default(),
        }
    }

    /// Takes a slot's new config and Maglev table, keeping connection counts and health of known servers.
    pub(super) fn update(&mut self, slot: &ListenerSlot, table: Option<&Arc<MaglevTable>>) {
        if slot.config.scheduler != self.config.scheduler {
            self.scheduler = scheduler(slot.config.scheduler, &self.servers, table);
        }
        self.config = slot.config.clone();
        self.removed = slot.removed;
        for (i, s) in slot.servers.iter().enumerate() {
            match self.servers.get_mut(i) {
                Some(view) => view.weight = s.weight,
                None => self.servers.push(ServerView {
                    addr: s.addr,
                    weight: s.weight,
                    healthy: true,
                    active: 0,
                    inactive: 0,
                }),
            }
        }
        self.removed_servers = slot.servers.iter().map(|s| s.removed).collect();
        self.targets = slot.servers.iter().map(|s| s.target).collect();
        self.rebuild();
        self.use_table(table);
    }

    /// After a weight or health change: the schedulers that keep their own state rebuild it (small: at most
    /// 256 buckets); a Maglev table is never built here, the next snapshot brings it.
    pub(super) fn rebuild(&mut self) {
        if !matches!(self.scheduler, Scheduler::Mh(_)) {
            self.scheduler.rebuild(&self.servers);
        }
    }

    /// Swaps in the listener's table from a new snapshot (an `Arc` swap, between batches).
    pub(super) fn use_table(&mut self, table: Option<&Arc<MaglevTable>>) {
        if let (Scheduler::Mh(mh), Some(t)) = (&mut self.scheduler, table) {
            mh.set_table(t.clone());
        }
        self.maglev = stateless_table(self.config.forwarding, table);
    }
}

/// The scheduler of `kind`; `mh` uses the shared table (built here only if a snapshot lacks it, which the
/// control side never sends).
fn scheduler(kind: SchedulerKind, servers: &[ServerView], table: Option<&Arc<MaglevTable>>) -> Scheduler {
    match (kind, table) {
        (SchedulerKind::Mh, Some(t)) => Scheduler::Mh(MaglevHash::from_table(t.clone())),
        _ => Scheduler::new(kind, servers),
    }
}

/// The Maglev table a DR listener forwards flows without an entry with (`None` for FULLNAT).
fn stateless_table(forwarding: Forwarding, table: Option<&Arc<MaglevTable>>) -> Option<Arc<MaglevTable>> {
    table.filter(|_| forwarding == Forwarding::Dr).cloned()
}

impl Forwarder {
    /// Takes a new snapshot of the Maglev tables (from the control side, between batches).
    pub(super) fn use_maglev(&mut self, tables: Arc<MaglevTables>) {
        for (l, listener) in self.listeners.iter_mut().enumerate() {
            listener.use_table(tables.get(l));
        }
        self.maglev = tables;
    }

    /// The Maglev tables in use (the snapshot last received).
    pub fn maglev_tables(&self) -> &Arc<MaglevTables> {
        &self.maglev
    }

    /// Before a scheduling decision: takes health changes another worker's checker made since the last look
    /// (one atomic load), so no new flow goes to a server the board already says is down.
    pub(super) fn refresh_health(&mut self) {
        if self.board.generation() != self.board_seen {
            self.sync_health();
        }
    }

    /// Applies health changes from the board to every listener's servers.
    pub(super) fn sync_health(&mut self) {
        self.board_seen = self.board.generation();
        for l in self.listeners.iter_mut() {
            let mut changed = false;
            for (view, target) in l.servers.iter_mut().zip(&l.targets) {
                let up = target.is_none_or(|t| self.board.is_up(t));
                if view.healthy != up {
                    view.healthy = up;
                    changed = true;
                }
            }
            if changed {
                l.rebuild();
            }
        }
    }

    /// Runs the health checker's timers and records its verdicts on the board. The checker's target ids carry
    /// the target's index on the board in `group` (see `xlb_tools::lb`).
    pub(super) fn run_health(&mut self, now: Instant) {
        let Some(h) = &mut self.health else { return };
        h.handle_timeout(now);
        while let Some(event) = h.poll_event() {
            let (id, up) = match event {
                crate::health::HealthEvent::Up(id) => (id, true),
                crate::health::HealthEvent::Down(id) => (id, false),
            };
            self.board.set(id.group, up);
            let target = self.layout.targets.get(id.group);
            let (group, server) = target.map_or((String::new(), None), |t| (t.group.clone(), Some(t.addr)));
            if up {
                tracing::info!(group, server = ?server, "server is up (health check)");
            } else {
                tracing::warn!(group, server = ?server, "server is DOWN (health check): taken out of scheduling");
            }
        }
    }
}
