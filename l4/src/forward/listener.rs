//! Listeners at run time: their servers' weights, counts and health (from the shared health board), and the
//! schedulers that pick among them.

use std::time::Instant;

use crate::config::ListenerConfig;
use crate::conn::Forwarding;
use crate::layout::ListenerSlot;
use crate::sched::{MaglevTable, Scheduler, ServerView};

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
    /// server on every worker and node (FULLNAT cannot forward without an entry, so it needs none).
    pub(super) maglev: Option<MaglevTable>,
    /// Connection entries of this listener on this worker (its per-listener cap counts them).
    pub(super) entries: u32,
    /// Of which half-open (SYN_RECV): what switches an `auto` SYN proxy on.
    pub(super) half_open: u32,
    /// The SYN proxy's state for this listener on this worker.
    pub(super) guard: Guard,
}

impl Listener {
    pub(super) fn from_slot(slot: &ListenerSlot) -> Listener {
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
            scheduler: Scheduler::new(slot.config.scheduler, &servers),
            maglev: stateless_table(&slot.config, &servers),
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

    /// Takes a slot's new config, keeping connection counts and health of known servers.
    pub(super) fn update(&mut self, slot: &ListenerSlot) {
        if slot.config.scheduler != self.config.scheduler {
            self.scheduler = Scheduler::new(slot.config.scheduler, &self.servers);
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
    }

    pub(super) fn rebuild(&mut self) {
        self.scheduler.rebuild(&self.servers);
        self.maglev = stateless_table(&self.config, &self.servers);
    }
}

/// The Maglev table of a DR listener (`None` for FULLNAT): 65 537 entries, rebuilt on every health or weight
/// change, so listeners that never forward without state do not pay for it.
fn stateless_table(config: &ListenerConfig, servers: &[ServerView]) -> Option<MaglevTable> {
    (config.forwarding == Forwarding::Dr).then(|| MaglevTable::new(servers, MaglevTable::DEFAULT_SIZE))
}

impl Forwarder {
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
