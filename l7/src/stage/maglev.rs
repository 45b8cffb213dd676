//! Maglev tables of the L7 groups that schedule with `mh`, built off the datapath like L4's
//! ([`xlb_l4::sched::shared`]): the control side builds one snapshot (a table per `mh` group, the unchanged
//! ones reused) after each configuration or health change and sends the same `Arc` to every worker's stage
//! ([`super::L7Message::Maglev`]); a worker never builds one.

use std::sync::Arc;

use xlb_l4::sched::{MaglevTables, SchedulerKind};
use xlb_l4::stats::HealthBoard;

use super::upstreams::{server_view, GroupSpec};

/// The tables of `groups` (slot = group index; only `mh` groups have one) with the health on `board`, reusing
/// from `previous` every table whose group's available servers did not change.
pub fn group_tables(groups: &[GroupSpec], board: &HealthBoard, previous: Option<&MaglevTables>) -> MaglevTables {
    let generation = board.generation();
    let slots = groups
        .iter()
        .map(|g| (g.scheduler == SchedulerKind::Mh).then(|| g.servers.iter().map(|s| server_view(s, board)).collect()));
    MaglevTables::from_views(generation, slots, previous)
}

/// The control side's builder of the L7 groups' tables: the current groups and board, and the last snapshot.
pub struct GroupMaglevBuilder {
    groups: Vec<GroupSpec>,
    board: Arc<HealthBoard>,
    current: Arc<MaglevTables>,
}

impl GroupMaglevBuilder {
    /// A builder for `groups` with health from `board` (builds the first snapshot).
    pub fn new(groups: Vec<GroupSpec>, board: Arc<HealthBoard>) -> GroupMaglevBuilder {
        let current = Arc::new(group_tables(&groups, &board, None));
        GroupMaglevBuilder { groups, board, current }
    }

    /// The latest snapshot.
    pub fn current(&self) -> &Arc<MaglevTables> {
        &self.current
    }

    /// New groups and board (a configuration change): the snapshot for them, to send with the change.
    pub fn rebind(&mut self, groups: Vec<GroupSpec>, board: Arc<HealthBoard>) -> Arc<MaglevTables> {
        self.current = Arc::new(group_tables(&groups, &board, Some(&self.current)));
        self.groups = groups;
        self.board = board;
        self.current.clone()
    }

    /// After the board changed: a new snapshot if any group's table changed, else `None` (nothing to send).
    pub fn refresh(&mut self) -> Option<Arc<MaglevTables>> {
        if self.board.generation() == self.current.generation() {
            return None;
        }
        let next = group_tables(&self.groups, &self.board, Some(&self.current));
        let changed = !next.same_tables(&self.current);
        self.current = Arc::new(next);
        changed.then(|| self.current.clone())
    }
}
