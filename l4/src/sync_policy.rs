//! When a connection is announced to HA peers ([`SyncPolicy`], after IPVS's `sync_threshold` and
//! `sync_refresh_period`). This is the one copy of the rule; the forwarder applies it after every packet of a
//! connection and when a connection ends.
//!
//! - A connection is first announced when its client has sent `threshold` packets (default 3): most short
//!   connections and every unanswered SYN never cost a sync message.
//! - Once announced, it is announced again at once when its state differs from the state the peers were last
//!   told (a failed announcement is retried on the next packet), so a backup shortens or lengthens its
//!   timeout with the master.
//! - **Refresh**: a backup's copy expires its state's timeout after the last announcement, while the master's
//!   copy is kept alive by traffic. So a packet arriving at least the refresh period after the last
//!   announcement announces the connection again, in every state (UDP, established, and the closing states,
//!   whose entries hold their local port). The period is `refresh`, but at most half the state's timeout:
//!   a flow whose packets are less than half its timeout apart is never lost by a backup. An idle connection
//!   is not refreshed; it expires on every node.
//! - When it ends (expiry, or ended early), a connection the peers know of is deleted on them.
//!
//! The policy is stateless. The connection table records what the peers were last told
//! ([`ConnTable::last_sync`], set by [`ConnTable::mark_synced`] once an announcement is queued), and the
//! caller passes it in.
//!
//! [`ConnTable::last_sync`]: crate::conn::ConnTable::last_sync
//! [`ConnTable::mark_synced`]: crate::conn::ConnTable::mark_synced

use std::time::{Duration, Instant};

use crate::conn::{Conn, LastSync, Timeouts};

/// Why a connection is announced now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncReason {
    /// Its client reached `threshold` packets (first announcement).
    Threshold,
    /// Its state differs from the one last announced.
    StateChange,
    /// The last announcement is older than the refresh period of its state.
    Refresh,
}

/// The session-sync policy (config `[ha] sync_threshold`, `sync_refresh_s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncPolicy {
    /// Client packets before a connection is first announced (0 behaves as 1).
    pub threshold: u32,
    /// A connection with traffic is announced again this long after its last announcement (at most half its
    /// state's timeout, see [`SyncPolicy::refresh_period`]).
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
    /// The refresh period of a connection whose state times out after `state_timeout`: `refresh`, or half the
    /// timeout if that is shorter.
    pub fn refresh_period(&self, state_timeout: Duration) -> Duration {
        self.refresh.min(state_timeout / 2)
    }

    /// After a packet of `conn` (either direction) was processed, at `now`: why to announce it, if at all.
    /// `last` is what the peers were last told (`None`: nothing yet), `timeouts` the table's state timeouts.
    pub fn after_packet(
        &self,
        conn: &Conn,
        last: Option<LastSync>,
        now: Instant,
        timeouts: &Timeouts,
    ) -> Option<SyncReason> {
        let Some(last) = last else {
            return (conn.client_packets >= self.threshold.max(1)).then_some(SyncReason::Threshold);
        };
        if conn.state != last.state {
            return Some(SyncReason::StateChange);
        }
        let period = self.refresh_period(timeouts.of(conn.state));
        (now.saturating_duration_since(last.at) >= period).then_some(SyncReason::Refresh)
    }

    /// When `conn` ends (expired, or ended early): whether to announce its deletion (only if the peers know
    /// of it).
    pub fn on_end(&self, conn: &Conn) -> bool {
        conn.synced
    }

    /// Checks `refresh` against the state timeouts: at least 1 s, and below the timeouts of the states
    /// long-lived flows stay in (`l4.timeouts.tcp_established`, `l4.timeouts.udp`). The message names the
    /// timeout; the caller prefixes the refresh field's name.
    pub fn validate(&self, timeouts: &Timeouts) -> Result<(), String> {
        if self.refresh < Duration::from_secs(1) {
            return Err("must be at least 1 second".into());
        }
        for (name, secs) in [("tcp_established", timeouts.tcp_established), ("udp", timeouts.udp)] {
            if self.refresh >= Duration::from_secs(u64::from(secs)) {
                return Err(format!(
                    "{} s is not below l4.timeouts.{name} ({secs} s): backups would drop live flows between refreshes",
                    self.refresh.as_secs()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{ConnState, FinSeen, Forwarding, Proto};
    use std::net::{Ipv4Addr, SocketAddrV4};
    use xlb_stack::wire::EthernetAddress;

    fn conn(state: ConnState, client_packets: u32) -> Conn {
        let a = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 40000);
        Conn {
            proto: if state == ConnState::Udp {
                Proto::Udp
            } else {
                Proto::Tcp
            },
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
            proxy: crate::conn::ProxyPhase::None,
            seq_delta: 0,
            answered: false,
        }
    }

    fn told(state: ConnState, at: Instant) -> Option<LastSync> {
        Some(LastSync { at, state })
    }

    #[test]
    fn threshold_then_state_changes_then_refresh() {
        let p = SyncPolicy::default();
        let t = Timeouts::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Below the threshold nothing is announced, state changes included.
        assert_eq!(p.after_packet(&conn(ConnState::SynRecv, 1), None, t0, &t), None);
        assert_eq!(p.after_packet(&conn(ConnState::Established, 2), None, t0, &t), None);
        assert_eq!(
            p.after_packet(&conn(ConnState::Established, 3), None, t0, &t),
            Some(SyncReason::Threshold)
        );
        // Announced: quiet until a state change or the refresh period.
        let est = conn(ConnState::Established, 10);
        let last = told(ConnState::Established, t0);
        assert_eq!(p.after_packet(&est, last, t0 + s(29), &t), None);
        assert_eq!(p.after_packet(&est, last, t0 + s(30), &t), Some(SyncReason::Refresh));
        assert_eq!(
            p.after_packet(&conn(ConnState::FinWait, 11), last, t0 + s(1), &t),
            Some(SyncReason::StateChange)
        );
        // A state change whose announcement failed is still a change at the next packet.
        assert_eq!(
            p.after_packet(&conn(ConnState::FinWait, 12), last, t0 + s(2), &t),
            Some(SyncReason::StateChange)
        );
        // Only a connection the peers know of is deleted on them when it ends.
        assert!(p.on_end(&Conn { synced: true, ..est }));
        assert!(!p.on_end(&est));
        // A threshold of 0 behaves as 1.
        let eager = SyncPolicy { threshold: 0, ..p };
        assert_eq!(eager.after_packet(&conn(ConnState::SynRecv, 0), None, t0, &t), None);
        assert_eq!(
            eager.after_packet(&conn(ConnState::SynRecv, 1), None, t0, &t),
            Some(SyncReason::Threshold)
        );
    }

    #[test]
    fn udp_and_closing_states_refresh_within_half_their_timeout() {
        let p = SyncPolicy::default();
        let t = Timeouts::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // UDP (300 s): the configured 30 s.
        let udp = conn(ConnState::Udp, 5);
        assert_eq!(p.after_packet(&udp, told(ConnState::Udp, t0), t0 + s(29), &t), None);
        assert_eq!(
            p.after_packet(&udp, told(ConnState::Udp, t0), t0 + s(30), &t),
            Some(SyncReason::Refresh)
        );
        // Close (10 s): refreshed after 5 s, before a backup's copy would expire.
        let close = conn(ConnState::Close, 5);
        assert_eq!(p.refresh_period(t.of(ConnState::Close)), s(5));
        assert_eq!(p.after_packet(&close, told(ConnState::Close, t0), t0 + s(4), &t), None);
        assert_eq!(
            p.after_packet(&close, told(ConnState::Close, t0), t0 + s(5), &t),
            Some(SyncReason::Refresh)
        );
        // TIME_WAIT (120 s) keeps the configured period.
        let tw = conn(ConnState::TimeWait, 5);
        assert_eq!(p.after_packet(&tw, told(ConnState::TimeWait, t0), t0 + s(29), &t), None);
        assert_eq!(
            p.after_packet(&tw, told(ConnState::TimeWait, t0), t0 + s(30), &t),
            Some(SyncReason::Refresh)
        );
    }

    #[test]
    fn refresh_must_be_below_the_long_lived_timeouts() {
        let p = |secs| SyncPolicy {
            refresh: Duration::from_secs(secs),
            ..SyncPolicy::default()
        };
        let mut t = Timeouts::default();
        p(30).validate(&t).unwrap();
        assert_eq!(p(0).validate(&t).unwrap_err(), "must be at least 1 second");
        t.tcp_established = 30;
        assert!(p(30)
            .validate(&t)
            .unwrap_err()
            .contains("l4.timeouts.tcp_established (30 s)"));
        p(29).validate(&t).unwrap();
        t.udp = 20;
        assert!(p(29).validate(&t).unwrap_err().contains("l4.timeouts.udp (20 s)"));
    }
}
