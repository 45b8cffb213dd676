//! When a connection is worth syncing ([`SyncPolicy`], as IPVS's `sync_threshold` / `sync_refresh_period`).
//!
//! - A connection is first synced when its client has sent `threshold` packets (default 3): most short
//!   connections and every unanswered SYN never cost a sync message.
//! - Once synced, it is synced again on every state change (so a backup shortens or lengthens its timeout
//!   with the master) and, for long-lived connections, on a packet at least `refresh` after the last sync
//!   (so the backup's copy, whose timeout runs from the last sync, does not expire while the master's is
//!   kept alive by traffic). Keep `refresh` below the shortest state timeout.
//! - When it expires, a synced connection is deleted on the peers.
//!
//! The policy is stateless: the caller keeps each connection's last sync time (e.g. in a vector indexed by
//! `ConnId`) and passes it in.

use std::time::{Duration, Instant};

use xlb_l4::conn::{Conn, ConnState};

/// Why a connection should be synced now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncReason {
    /// Its client reached `threshold` packets.
    Threshold,
    /// Its state changed since the last sync.
    StateChange,
    /// The last sync is older than `refresh`.
    Refresh,
}

/// The policy (config `[ha.sync]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncPolicy {
    /// Client packets before a connection is first synced (at least 1).
    pub threshold: u32,
    /// A synced connection with traffic is synced again this long after its last sync.
    pub refresh: Duration,
}

impl Default for SyncPolicy {
    fn default() -> Self {
        SyncPolicy {
            threshold: 3,
            refresh: Duration::from_secs(30),
        }
    }
}

impl SyncPolicy {
    /// After a packet of `conn` (either direction) was processed: whether to queue an upsert. `prev_state` is
    /// the state before the packet; `last_sync` when the connection was last queued (`None`: never).
    pub fn after_packet(
        &self,
        conn: &Conn,
        prev_state: ConnState,
        last_sync: Option<Instant>,
        now: Instant,
    ) -> Option<SyncReason> {
        match last_sync {
            None => (conn.client_packets >= self.threshold.max(1)).then_some(SyncReason::Threshold),
            Some(_) if conn.state != prev_state => Some(SyncReason::StateChange),
            Some(at) if now.saturating_duration_since(at) >= self.refresh => Some(SyncReason::Refresh),
            Some(_) => None,
        }
    }

    /// When `conn` expired: whether to queue a delete (only connections the peers know of).
    pub fn on_expiry(&self, last_sync: Option<Instant>) -> bool {
        last_sync.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};
    use xlb_l4::conn::{FinSeen, Forwarding, Proto};
    use xlb_stack::wire::EthernetAddress;

    fn conn(state: ConnState, client_packets: u32) -> Conn {
        let a = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 40000);
        Conn {
            proto: Proto::Tcp,
            forwarding: Forwarding::Dr,
            client: a,
            vip: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80),
            local: a,
            backend: SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 2), 80),
            listener: 0,
            server: 0,
            state,
            fins: FinSeen::default(),
            client_port: 0,
            client_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            client_packets,
            synced: false,
        }
    }

    #[test]
    fn threshold_then_state_changes_then_refresh() {
        let p = SyncPolicy::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Below the threshold nothing is synced, state changes included.
        assert_eq!(
            p.after_packet(&conn(ConnState::SynRecv, 1), ConnState::SynRecv, None, t0),
            None
        );
        assert_eq!(
            p.after_packet(&conn(ConnState::Established, 2), ConnState::SynRecv, None, t0),
            None
        );
        assert_eq!(
            p.after_packet(&conn(ConnState::Established, 3), ConnState::Established, None, t0),
            Some(SyncReason::Threshold)
        );
        // Synced: quiet until a state change or the refresh period.
        let est = conn(ConnState::Established, 10);
        assert_eq!(p.after_packet(&est, ConnState::Established, Some(t0), t0 + s(29)), None);
        assert_eq!(
            p.after_packet(&est, ConnState::Established, Some(t0), t0 + s(30)),
            Some(SyncReason::Refresh)
        );
        assert_eq!(
            p.after_packet(
                &conn(ConnState::FinWait, 11),
                ConnState::Established,
                Some(t0),
                t0 + s(1)
            ),
            Some(SyncReason::StateChange)
        );
        assert!(p.on_expiry(Some(t0)));
        assert!(!p.on_expiry(None));
        // A threshold of 0 behaves as 1.
        let eager = SyncPolicy { threshold: 0, ..p };
        assert_eq!(
            eager.after_packet(&conn(ConnState::SynRecv, 0), ConnState::SynRecv, None, t0),
            None
        );
        assert_eq!(
            eager.after_packet(&conn(ConnState::SynRecv, 1), ConnState::SynRecv, None, t0),
            Some(SyncReason::Threshold)
        );
    }
}
