//! Connection state tracking with IPVS-like states and per-state timeouts.
//!
//! The balancer only observes segments; it never terminates TCP. States follow IPVS: a client SYN opens
//! `SynRecv`, the client's ACK completes `Established`, a FIN from one side is `FinWait`, FINs from both sides
//! are `TimeWait`, an RST is `Close`. A client SYN on a connection in `TimeWait` or `Close` reopens it (port
//! reuse). UDP flows have a single state.

use std::time::Duration;

use serde::Deserialize;

pub use xlb_stack::wire::TcpFlags;

/// State of a tracked flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// Client SYN seen.
    SynRecv,
    /// Handshake completed.
    Established,
    /// One side sent FIN.
    FinWait,
    /// Both sides sent FIN.
    TimeWait,
    /// RST seen.
    Close,
    /// A UDP flow.
    Udp,
}

impl ConnState {
    /// Name in stats and connection dumps.
    pub fn name(self) -> &'static str {
        match self {
            ConnState::SynRecv => "syn_recv",
            ConnState::Established => "established",
            ConnState::FinWait => "fin_wait",
            ConnState::TimeWait => "time_wait",
            ConnState::Close => "close",
            ConnState::Udp => "udp",
        }
    }

    /// Whether the connection counts as active (IPVS: established), for wlc.
    pub fn is_active(self) -> bool {
        matches!(self, ConnState::Established | ConnState::Udp)
    }
}

/// Direction of a segment relative to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client to server.
    FromClient,
    /// Server to client.
    FromServer,
}

/// FINs seen so far, per direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FinSeen {
    /// The client sent FIN.
    pub client: bool,
    /// The server sent FIN.
    pub server: bool,
}

/// Next state after a segment in `dir` with `flags`.
pub fn next_state(state: ConnState, fins: &mut FinSeen, dir: Dir, flags: TcpFlags) -> ConnState {
    if flags.rst() {
        return ConnState::Close;
    }
    if dir == Dir::FromClient && flags.syn() && !flags.ack() {
        return match state {
            ConnState::TimeWait | ConnState::Close => {
                *fins = FinSeen::default();
                ConnState::SynRecv
            }
            other => other,
        };
    }
    if flags.fin() {
        match dir {
            Dir::FromClient => fins.client = true,
            Dir::FromServer => fins.server = true,
        }
        return if fins.client && fins.server {
            ConnState::TimeWait
        } else {
            ConnState::FinWait
        };
    }
    match (state, dir) {
        (ConnState::SynRecv, Dir::FromClient) if flags.ack() => ConnState::Established,
        (other, _) => other,
    }
}

/// Per-state timeouts in seconds (config `[l4.timeouts]`), defaults as IPVS.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Established TCP.
    pub tcp_established: u32,
    /// Handshake in progress.
    pub tcp_syn_recv: u32,
    /// One FIN seen.
    pub tcp_fin_wait: u32,
    /// Both FINs seen.
    pub tcp_time_wait: u32,
    /// RST seen.
    pub tcp_close: u32,
    /// UDP flows.
    pub udp: u32,
    /// Handshake in progress, for entries opened while the table or local ports are under pressure
    /// (`[l4] pressure_percent`).
    pub tcp_syn_recv_pressure: u32,
    /// UDP flows the server has not answered yet, opened or refreshed under pressure.
    pub udp_unanswered_pressure: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_established: 900,
            tcp_syn_recv: 60,
            tcp_fin_wait: 120,
            tcp_time_wait: 120,
            tcp_close: 10,
            udp: 300,
            tcp_syn_recv_pressure: 5,
            udp_unanswered_pressure: 10,
        }
    }
}

impl Timeouts {
    /// Timeout of `state`.
    pub fn of(&self, state: ConnState) -> Duration {
        let s = match state {
            ConnState::SynRecv => self.tcp_syn_recv,
            ConnState::Established => self.tcp_established,
            ConnState::FinWait => self.tcp_fin_wait,
            ConnState::TimeWait => self.tcp_time_wait,
            ConnState::Close => self.tcp_close,
            ConnState::Udp => self.udp,
        };
        Duration::from_secs(u64::from(s))
    }

    /// Checks every timeout is at least one second; names the field.
    pub fn validate(&self) -> Result<(), String> {
        let fields = [
            ("tcp_established", self.tcp_established),
            ("tcp_syn_recv", self.tcp_syn_recv),
            ("tcp_fin_wait", self.tcp_fin_wait),
            ("tcp_time_wait", self.tcp_time_wait),
            ("tcp_close", self.tcp_close),
            ("udp", self.udp),
            ("tcp_syn_recv_pressure", self.tcp_syn_recv_pressure),
            ("udp_unanswered_pressure", self.udp_unanswered_pressure),
        ];
        match fields.iter().find(|(_, v)| *v == 0) {
            Some((name, _)) => Err(format!("l4.timeouts.{name}: must be at least 1 second")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYN: TcpFlags = TcpFlags::SYN;
    const SYNACK: TcpFlags = TcpFlags::SYN_ACK;
    const ACK: TcpFlags = TcpFlags::ACK;
    const FIN: TcpFlags = TcpFlags(TcpFlags::FIN.0 | TcpFlags::ACK.0);
    const RST: TcpFlags = TcpFlags::RST;

    fn walk(steps: &[(Dir, TcpFlags)]) -> Vec<ConnState> {
        let mut s = ConnState::SynRecv;
        let mut fins = FinSeen::default();
        steps
            .iter()
            .map(|(d, f)| {
                s = next_state(s, &mut fins, *d, *f);
                s
            })
            .collect()
    }

    #[test]
    fn full_lifecycle() {
        use ConnState::*;
        use Dir::*;
        let states = walk(&[
            (FromServer, SYNACK),
            (FromClient, ACK),
            (FromClient, ACK),
            (FromClient, FIN),
            (FromServer, ACK),
            (FromServer, FIN),
            (FromClient, ACK),
        ]);
        assert_eq!(
            states,
            vec![SynRecv, Established, Established, FinWait, FinWait, TimeWait, TimeWait]
        );
    }

    #[test]
    fn reset_closes_and_syn_reopens() {
        use ConnState::*;
        use Dir::*;
        let states = walk(&[
            (FromServer, SYNACK),
            (FromClient, ACK),
            (FromServer, RST),
            (FromClient, SYN),
        ]);
        assert_eq!(states, vec![SynRecv, Established, Close, SynRecv]);
    }

    #[test]
    fn retransmitted_syn_keeps_state() {
        use ConnState::*;
        let states = walk(&[(Dir::FromClient, SYN), (Dir::FromClient, SYN)]);
        assert_eq!(states, vec![SynRecv, SynRecv]);
    }

    #[test]
    fn ipvs_default_timeouts() {
        let t = Timeouts::default();
        assert_eq!(t.of(ConnState::Established).as_secs(), 900);
        assert_eq!(t.of(ConnState::SynRecv).as_secs(), 60);
        assert_eq!(t.of(ConnState::FinWait).as_secs(), 120);
        assert_eq!(t.of(ConnState::TimeWait).as_secs(), 120);
        assert_eq!(t.of(ConnState::Close).as_secs(), 10);
        assert_eq!(t.of(ConnState::Udp).as_secs(), 300);
        assert!(Timeouts { udp: 0, ..t }
            .validate()
            .unwrap_err()
            .contains("l4.timeouts.udp"));
    }
}
