//! What is synchronised about a connection: [`ConnRecord`] (an upsert) and [`ConnKey`] (a delete), with their
//! fixed-size wire encodings.
//!
//! Listener and server slot indices are local to a node (they follow each node's config history), so a record
//! names the listener by protocol + VIP:port ([`ListenerId`]) and the server by its address; the importing node
//! maps both to its own slots and rebuilds a [`Conn`] with [`ConnParts::into_conn`].
//!
//! # Record layout ([`RECORD_LEN`] = 48 bytes, integers big-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | protocol (6 TCP, 17 UDP) |
//! | 1 | 1 | forwarding (1 FULLNAT, 2 DR) |
//! | 2 | 1 | state (1 syn_recv, 2 established, 3 fin_wait, 4 time_wait, 5 close, 6 udp) |
//! | 3 | 1 | flags: bit 0 client FIN seen, bit 1 server FIN seen, bit 2 SYN-proxied (TCP FULLNAT: sequence numbers translated by the delta at 44), others 0 |
//! | 4 | 6 | client IPv4 + port |
//! | 10 | 6 | VIP + port (with the protocol: the listener) |
//! | 16 | 6 | local IPv4 + port (FULLNAT source towards the backend; DR: equal to client) |
//! | 22 | 6 | backend IPv4 + port (the server) |
//! | 28 | 6 | client MAC (where replies go) |
//! | 34 | 1 | ingress port index (the port client packets arrive on) |
//! | 35 | 1 | reserved, 0 |
//! | 36 | 4 | remaining timeout, milliseconds (at most [`MAX_REMAINING_MS`]) |
//! | 40 | 4 | client packets |
//! | 44 | 4 | SYN proxy sequence delta (added to server → client seq, taken from client → server ack); 0 unless flag bit 2 |
//!
//! # Key layout ([`KEY_LEN`] = 13 bytes)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | protocol |
//! | 1 | 6 | client IPv4 + port |
//! | 7 | 6 | VIP + port |

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use xlb_l4::conn::{Conn, ConnState, FinSeen, FlowKey, Forwarding, Proto, ProxyPhase};
use xlb_stack::wire::EthernetAddress;

/// Encoded size of a [`ConnRecord`].
pub const RECORD_LEN: usize = 48;
/// Encoded size of a [`ConnKey`].
pub const KEY_LEN: usize = 13;
/// Longest remaining timeout a record may carry (30 days); [`ConnRecord::from_conn`] clamps to it.
pub const MAX_REMAINING_MS: u32 = 30 * 24 * 3600 * 1000;

const FLAG_FIN_CLIENT: u8 = 0x01;
const FLAG_FIN_SERVER: u8 = 0x02;
const FLAG_SYN_PROXY: u8 = 0x04;

/// A field of a record or key is out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordError {
    /// The field.
    pub field: &'static str,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid connection record field `{}`", self.field)
    }
}

impl std::error::Error for RecordError {}

fn invalid<T>(field: &'static str) -> Result<T, RecordError> {
    Err(RecordError { field })
}

/// Identifies a listener on every node: protocol and VIP:port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId {
    /// Protocol.
    pub proto: Proto,
    /// VIP and port.
    pub vip: SocketAddrV4,
}

/// Identifies a connection on every node (the client-side flow key): the unit of deletes and coalescing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Protocol.
    pub proto: Proto,
    /// Client address and port.
    pub client: SocketAddrV4,
    /// VIP and port.
    pub vip: SocketAddrV4,
}

impl ConnKey {
    /// The key of `conn`.
    pub fn of(conn: &Conn) -> ConnKey {
        ConnKey {
            proto: conn.proto,
            client: conn.client,
            vip: conn.vip,
        }
    }

    /// The key of a client → VIP flow (as the forwarder reports ended connections).
    pub fn from_flow_key(key: &FlowKey) -> ConnKey {
        ConnKey {
            proto: key.proto,
            client: key.src,
            vip: key.dst,
        }
    }

    /// The connection table key of client → VIP packets.
    pub fn flow_key(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            src: self.client,
            dst: self.vip,
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), RecordError> {
        check_endpoint(self.client, "key.client")?;
        check_endpoint(self.vip, "key.vip")
    }

    /// Decodes and validates a key from exactly [`KEY_LEN`] bytes.
    pub fn parse(b: &[u8]) -> Result<ConnKey, RecordError> {
        if b.len() != KEY_LEN {
            return invalid("key length");
        }
        let key = ConnKey {
            proto: parse_proto(b[0])?,
            client: get_addr(&b[1..7]),
            vip: get_addr(&b[7..13]),
        };
        key.validate()?;
        Ok(key)
    }

    /// Encodes into exactly [`KEY_LEN`] bytes.
    pub fn emit(&self, b: &mut [u8]) {
        b[0] = self.proto as u8;
        put_addr(&mut b[1..7], self.client);
        put_addr(&mut b[7..13], self.vip);
    }
}

/// Everything another node needs to keep forwarding a connection, minus its local slot indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRecord {
    /// Protocol.
    pub proto: Proto,
    /// Forwarding method.
    pub forwarding: Forwarding,
    /// The client.
    pub client: SocketAddrV4,
    /// The listener's VIP and port.
    pub vip: SocketAddrV4,
    /// FULLNAT: the local address and port towards the backend. DR: equal to `client`.
    pub local: SocketAddrV4,
    /// The backend server.
    pub backend: SocketAddrV4,
    /// TCP state (or `Udp`).
    pub state: ConnState,
    /// FINs seen.
    pub fins: FinSeen,
    /// Index of the port client packets arrive on (same port layout on every node is assumed; the importer
    /// may override it).
    pub ingress_port: u8,
    /// MAC the client's packets came from.
    pub client_mac: EthernetAddress,
    /// Packets seen from the client.
    pub client_packets: u32,
    /// Time left before the connection expires, in milliseconds, when the record was made.
    pub remaining_ms: u32,
    /// A SYN-proxied connection's sequence delta (server → client seq + delta, client → server ack − delta).
    pub seq_delta: Option<u32>,
}

/// A record ready to become a [`Conn`] once the importer has mapped the listener and server to its slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnParts {
    /// The listener to look up (protocol + VIP:port).
    pub listener: ListenerId,
    /// The server to look up within that listener's group.
    pub backend: SocketAddrV4,
    /// Expire the imported connection after this long.
    pub remaining: Duration,
    record: ConnRecord,
}

impl ConnParts {
    /// The connection with the importer's slot indices. It is not marked `synced`: this node has not sent it.
    pub fn into_conn(self, listener: u16, server: u16) -> Conn {
        let r = self.record;
        Conn {
            proto: r.proto,
            forwarding: r.forwarding,
            client: r.client,
            vip: r.vip,
            local: r.local,
            backend: r.backend,
            listener,
            server,
            state: r.state,
            fins: r.fins,
            client_port: r.ingress_port,
            client_mac: r.client_mac,
            client_packets: r.client_packets,
            synced: false,
            proxy: if r.seq_delta.is_some() {
                ProxyPhase::Translating
            } else {
                ProxyPhase::None
            },
            seq_delta: r.seq_delta.unwrap_or(0),
            answered: true,
        }
    }
}

impl ConnRecord {
    /// The record of `conn`, which expires in `remaining` (from `ConnTable::expires_in`).
    pub fn from_conn(conn: &Conn, remaining: Duration) -> ConnRecord {
        ConnRecord {
            proto: conn.proto,
            forwarding: conn.forwarding,
            client: conn.client,
            vip: conn.vip,
            local: conn.local,
            backend: conn.backend,
            state: conn.state,
            fins: conn.fins,
            ingress_port: conn.client_port,
            client_mac: conn.client_mac,
            client_packets: conn.client_packets,
            remaining_ms: remaining.as_millis().min(u128::from(MAX_REMAINING_MS)) as u32,
            seq_delta: (conn.proxy == ProxyPhase::Translating).then_some(conn.seq_delta),
        }
    }

    /// What the importer needs: look up `listener` and `backend`, then [`ConnParts::into_conn`].
    pub fn to_conn_parts(&self) -> ConnParts {
        ConnParts {
            listener: self.listener(),
            backend: self.backend,
            remaining: Duration::from_millis(u64::from(self.remaining_ms)),
            record: *self,
        }
    }

    /// The key (deletes and coalescing).
    pub fn key(&self) -> ConnKey {
        ConnKey {
            proto: self.proto,
            client: self.client,
            vip: self.vip,
        }
    }

    /// The listener the connection belongs to.
    pub fn listener(&self) -> ListenerId {
        ListenerId {
            proto: self.proto,
            vip: self.vip,
        }
    }

    /// Checks every field (the sender refuses what a receiver would refuse).
    pub fn validate(&self) -> Result<(), RecordError> {
        let udp = self.proto == Proto::Udp;
        if udp != (self.state == ConnState::Udp) {
            return invalid("state");
        }
        if udp && (self.fins.client || self.fins.server || self.seq_delta.is_some()) {
            return invalid("flags");
        }
        if self.seq_delta.is_some() && self.forwarding != Forwarding::Fullnat {
            return invalid("flags");
        }
        check_endpoint(self.client, "client")?;
        check_endpoint(self.vip, "vip")?;
        check_endpoint(self.backend, "backend")?;
        match self.forwarding {
            Forwarding::Fullnat => check_endpoint(self.local, "local")?,
            Forwarding::Dr if self.local != self.client => return invalid("local"),
            Forwarding::Dr => {}
        }
        if self.client_mac.is_multicast() {
            return invalid("client_mac");
        }
        if self.remaining_ms > MAX_REMAINING_MS {
            return invalid("remaining_ms");
        }
        Ok(())
    }

    /// Decodes and validates a record from exactly [`RECORD_LEN`] bytes.
    pub fn parse(b: &[u8]) -> Result<ConnRecord, RecordError> {
        if b.len() != RECORD_LEN {
            return invalid("record length");
        }
        let forwarding = match b[1] {
            1 => Forwarding::Fullnat,
            2 => Forwarding::Dr,
            _ => return invalid("forwarding"),
        };
        let state = match b[2] {
            1 => ConnState::SynRecv,
            2 => ConnState::Established,
            3 => ConnState::FinWait,
            4 => ConnState::TimeWait,
            5 => ConnState::Close,
            6 => ConnState::Udp,
            _ => return invalid("state"),
        };
        if b[3] & !(FLAG_FIN_CLIENT | FLAG_FIN_SERVER | FLAG_SYN_PROXY) != 0 {
            return invalid("flags");
        }
        let delta = u32::from_be_bytes([b[44], b[45], b[46], b[47]]);
        if b[3] & FLAG_SYN_PROXY == 0 && delta != 0 {
            return invalid("seq_delta");
        }
        if b[35] != 0 {
            return invalid("reserved");
        }
        let record = ConnRecord {
            proto: parse_proto(b[0])?,
            forwarding,
            client: get_addr(&b[4..10]),
            vip: get_addr(&b[10..16]),
            local: get_addr(&b[16..22]),
            backend: get_addr(&b[22..28]),
            state,
            fins: FinSeen {
                client: b[3] & FLAG_FIN_CLIENT != 0,
                server: b[3] & FLAG_FIN_SERVER != 0,
            },
            ingress_port: b[34],
            client_mac: EthernetAddress::from_bytes(&b[28..34]),
            remaining_ms: u32::from_be_bytes([b[36], b[37], b[38], b[39]]),
            client_packets: u32::from_be_bytes([b[40], b[41], b[42], b[43]]),
            seq_delta: (b[3] & FLAG_SYN_PROXY != 0).then_some(delta),
        };
        record.validate()?;
        Ok(record)
    }

    /// Encodes into exactly [`RECORD_LEN`] bytes.
    pub fn emit(&self, b: &mut [u8]) {
        b[0] = self.proto as u8;
        b[1] = match self.forwarding {
            Forwarding::Fullnat => 1,
            Forwarding::Dr => 2,
        };
        b[2] = match self.state {
            ConnState::SynRecv => 1,
            ConnState::Established => 2,
            ConnState::FinWait => 3,
            ConnState::TimeWait => 4,
            ConnState::Close => 5,
            ConnState::Udp => 6,
        };
        b[3] = if self.fins.client { FLAG_FIN_CLIENT } else { 0 }
            | if self.fins.server { FLAG_FIN_SERVER } else { 0 }
            | if self.seq_delta.is_some() { FLAG_SYN_PROXY } else { 0 };
        put_addr(&mut b[4..10], self.client);
        put_addr(&mut b[10..16], self.vip);
        put_addr(&mut b[16..22], self.local);
        put_addr(&mut b[22..28], self.backend);
        b[28..34].copy_from_slice(self.client_mac.as_bytes());
        b[34] = self.ingress_port;
        b[35] = 0;
        b[36..40].copy_from_slice(&self.remaining_ms.to_be_bytes());
        b[40..44].copy_from_slice(&self.client_packets.to_be_bytes());
        b[44..48].copy_from_slice(&self.seq_delta.unwrap_or(0).to_be_bytes());
    }
}

fn parse_proto(b: u8) -> Result<Proto, RecordError> {
    match b {
        6 => Ok(Proto::Tcp),
        17 => Ok(Proto::Udp),
        _ => invalid("proto"),
    }
}

/// A unicast host address with a port.
fn check_endpoint(a: SocketAddrV4, field: &'static str) -> Result<(), RecordError> {
    let ip = a.ip();
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || a.port() == 0 {
        return invalid(field);
    }
    Ok(())
}

fn get_addr(b: &[u8]) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(b[0], b[1], b[2], b[3]), u16::from_be_bytes([b[4], b[5]]))
}

fn put_addr(b: &mut [u8], a: SocketAddrV4) {
    b[..4].copy_from_slice(&a.ip().octets());
    b[4..6].copy_from_slice(&a.port().to_be_bytes());
}
