//! Maglev tables built once, off the datapath, and shared by every worker.
//!
//! A Maglev table has 65 537 slots; building one takes about a millisecond. L4 listeners that use one (the `mh`
//! scheduler, and DR listeners for flows without a table entry) must all use the *same* table on every worker,
//! and a new one after every health or weight change. The control side builds them: [`MaglevBuilder`] holds the
//! current [`Layout`] and [`HealthBoard`], and after a change of either makes a new [`MaglevTables`] snapshot —
//! one `Arc<MaglevTable>` per listener slot that uses one, the unchanged ones reused — which the daemon sends to
//! every worker. A worker swaps it in between batches (`ControlMessage::Maglev`); its packet path reads its own
//! `Arc`, never a lock. Between a health change and the new snapshot a worker already knows the new health (the
//! board) and [`MaglevTable::pick`] skips servers that are down, so no new flow goes to a server known down.

use std::net::SocketAddrV4;
use std::sync::Arc;

use super::{MaglevTable, SchedulerKind, ServerView};
use crate::config::{ListenerConfig, ListenerProtocol};
use crate::conn::Forwarding;
use crate::layout::{Layout, ListenerSlot};
use crate::stats::HealthBoard;

/// What a listener's table is built from: its available servers as (slot index, address, weight).
type Inputs = Vec<(usize, SocketAddrV4, u32)>;

/// The Maglev tables of every listener slot of one layout, at one health-board generation. Immutable.
#[derive(Debug, Default)]
pub struct MaglevTables {
    /// Per listener slot: its table and what it was built from (`None`: the listener uses no table).
    tables: Vec<Option<(Arc<MaglevTable>, Inputs)>>,
    /// The board generation read before the states were.
    generation: u64,
}

/// Whether an L4 listener uses a Maglev table: `mh` schedules with it, DR forwards flows without an entry with
/// it. HTTP listeners do not: their groups' tables are L7's ([`MaglevTables::from_views`]).
pub fn uses_maglev(config: &ListenerConfig) -> bool {
    let l4 = matches!(config.protocol, ListenerProtocol::Tcp | ListenerProtocol::Udp);
    l4 && (config.scheduler == SchedulerKind::Mh || config.forwarding == Forwarding::Dr)
}

/// The servers of a listener slot as a worker sees them: weights from the layout, health from the board.
pub fn server_views(slot: &ListenerSlot, board: &HealthBoard) -> Vec<ServerView> {
    slot.servers
        .iter()
        .map(|s| ServerView {
            addr: s.addr,
            weight: s.weight,
            healthy: s.target.is_none_or(|t| board.is_up(t)),
            active: 0,
            inactive: 0,
        })
        .collect()
}

impl MaglevTables {
    /// Builds the tables of `layout` with the health on `board`, reusing from `previous` every table whose
    /// listener's available servers did not change.
    pub fn build(layout: &Layout, board: &HealthBoard, previous: Option<&MaglevTables>) -> MaglevTables {
        let generation = board.generation();
        let slots = layout
            .listeners
            .iter()
            .map(|slot| uses_maglev(&slot.config).then(|| server_views(slot, board)));
        MaglevTables::from_views(generation, slots, previous)
    }

    /// The tables of slots given by their servers (`None`: the slot uses no table) at board generation
    /// `generation` (read before the servers' health was), reusing from `previous` every table whose slot's
    /// available servers did not change. L7 builds its `mh` groups' tables with it, a group per slot.
    pub fn from_views(
        generation: u64,
        slots: impl IntoIterator<Item = Option<Vec<ServerView>>>,
        previous: Option<&MaglevTables>,
    ) -> MaglevTables {
        let mut empty: Option<Arc<MaglevTable>> = None;
        let tables = slots
            .into_iter()
            .enumerate()
            .map(|(l, views)| {
                let views = views?;
                let inputs: Inputs = views
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.available())
                    .map(|(i, v)| (i, v.addr, v.weight))
                    .collect();
                if let Some(Some((table, old))) = previous.and_then(|p| p.tables.get(l)) {
                    if *old == inputs {
                        return Some((table.clone(), inputs));
                    }
                }
                // Listeners without an available server (removed ones among them) share one empty table.
                let table = if inputs.is_empty() {
                    empty
                        .get_or_insert_with(|| Arc::new(MaglevTable::new(&[], MaglevTable::DEFAULT_SIZE)))
                        .clone()
                } else {
                    Arc::new(MaglevTable::new(&views, MaglevTable::DEFAULT_SIZE))
                };
                Some((table, inputs))
            })
            .collect();
        MaglevTables { tables, generation }
    }

    /// The table of listener slot `l`, if it uses one.
    pub fn get(&self, l: usize) -> Option<&Arc<MaglevTable>> {
        self.tables.get(l)?.as_ref().map(|(t, _)| t)
    }

    /// The health-board generation the tables reflect.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether `other` holds the very same tables (pointer-equal, slot by slot).
    pub fn same_tables(&self, other: &MaglevTables) -> bool {
        self.tables.len() == other.tables.len()
            && self.tables.iter().zip(&other.tables).all(|(a, b)| match (a, b) {
                (Some((a, _)), Some((b, _))) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            })
    }
}

/// The control side's Maglev builder: the current layout and board, and the last snapshot made for them.
#[derive(Debug)]
pub struct MaglevBuilder {
    layout: Arc<Layout>,
    board: Arc<HealthBoard>,
    current: Arc<MaglevTables>,
}

impl MaglevBuilder {
    /// A builder for `layout` with health from `board` (builds the first snapshot).
    pub fn new(layout: Arc<Layout>, board: Arc<HealthBoard>) -> MaglevBuilder {
        let current = Arc::new(MaglevTables::build(&layout, &board, None));
        MaglevBuilder { layout, board, current }
    }

    /// The latest snapshot.
    pub fn current(&self) -> &Arc<MaglevTables> {
        &self.current
    }

    /// A new layout and board (a configuration change): the snapshot for them, to send with the change.
    pub fn rebind(&mut self, layout: Arc<Layout>, board: Arc<HealthBoard>) -> Arc<MaglevTables> {
        self.current = Arc::new(MaglevTables::build(&layout, &board, Some(&self.current)));
        self.layout = layout;
        self.board = board;
        self.current.clone()
    }

    /// After the board changed: a new snapshot if any listener's table changed, else `None` (nothing to send).
    pub fn refresh(&mut self) -> Option<Arc<MaglevTables>> {
        if self.board.generation() == self.current.generation {
            return None;
        }
        let next = MaglevTables::build(&self.layout, &self.board, Some(&self.current));
        let changed = !next.same_tables(&self.current);
        self.current = Arc::new(next);
        changed.then(|| self.current.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GroupConfig, ListenerConfig, RemovedServerPolicy};

    #[derive(serde::Deserialize)]
    struct Doc {
        listener: Vec<ListenerConfig>,
        group: Vec<GroupConfig>,
    }

    fn config(scheduler: &str, forwarding: &str, checked: bool) -> (Vec<ListenerConfig>, Vec<GroupConfig>) {
        let check = if checked {
            "health_check = { kind = \"tcp\" }"
        } else {
            ""
        };
        let c: Doc = toml::from_str(&format!(
            r#"
[[listener]]
name = "web"
vip = "198.18.0.100"
port = 80
protocol = "tcp"
scheduler = "{scheduler}"
forwarding = "{forwarding}"
group = "web"

[[listener]]
name = "other"
vip = "198.18.0.100"
port = 81
protocol = "tcp"
scheduler = "rr"
forwarding = "fullnat"
group = "web"

[[group]]
name = "web"
{check}
servers = [{{ addr = "198.19.0.21:80" }}, {{ addr = "198.19.0.22:80" }}, {{ addr = "198.19.0.23:80" }}]
"#
        ))
        .unwrap();
        (c.listener, c.group)
    }

    #[test]
    fn only_listeners_that_use_maglev_get_a_table() {
        for (scheduler, forwarding) in [("mh", "fullnat"), ("rr", "dr"), ("mh", "dr")] {
            let (l, g) = config(scheduler, forwarding, false);
            let layout = Layout::new(&l, &g, RemovedServerPolicy::Keep);
            let t = MaglevTables::build(&layout, &HealthBoard::new(0), None);
            assert!(t.get(0).is_some(), "{scheduler}/{forwarding}");
            assert!(t.get(1).is_none(), "rr FULLNAT needs no table");
        }
    }

    #[test]
    fn a_health_change_rebuilds_only_what_it_changes() {
        let (l, g) = config("mh", "fullnat", true);
        let layout = Arc::new(Layout::new(&l, &g, RemovedServerPolicy::Keep));
        let board = Arc::new(HealthBoard::new(layout.targets.len()));
        let mut b = MaglevBuilder::new(layout.clone(), board.clone());
        let first = b.current().clone();
        assert!(b.refresh().is_none(), "nothing changed");
        board.set(1, false);
        let second = b.refresh().expect("a server went down");
        assert!(!Arc::ptr_eq(first.get(0).unwrap(), second.get(0).unwrap()));
        let mut counts = [0u32; 3];
        second.get(0).unwrap().slot_counts(&mut counts);
        assert_eq!(counts[1], 0, "the down server has no slot");
        // Down and up again before a look: the same inputs, so the same table is kept.
        board.set(2, false);
        board.set(2, true);
        assert!(b.refresh().is_none());
        // A reload that changes nothing for the listener keeps its table.
        let next = Arc::new(layout.next(&l, &g, RemovedServerPolicy::Keep));
        let third = b.rebind(next, board.clone());
        assert!(Arc::ptr_eq(second.get(0).unwrap(), third.get(0).unwrap()));
    }
}
