//! Server counters: requests by opcode and status, connections by outcome, per key.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::keys::KeyStore;
use crate::wire::{Opcode, Status};

/// Why a connection ended or was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed cleanly between frames.
    PeerClosed,
    /// The peer closed in the middle of a frame.
    Truncated,
    /// A malformed frame (bad magic, version, opcode, oversized length).
    Malformed,
    /// A started frame was not completed within `frame_timeout_secs`.
    SlowClient,
    /// Responses could not be written (peer not reading, or gone).
    WriteFailed,
    /// A read error on the socket (reset, TLS error after the handshake).
    ReadError,
    /// The TLS handshake failed (no or untrusted client certificate, timeout, ...).
    TlsHandshake,
    /// Refused because `max_connections` were being served.
    TooManyConnections,
    /// Closed because the server shuts down.
    Shutdown,
}

impl CloseReason {
    /// All reasons, in counter order.
    pub const ALL: [CloseReason; 9] = [
        CloseReason::PeerClosed,
        CloseReason::Truncated,
        CloseReason::Malformed,
        CloseReason::SlowClient,
        CloseReason::WriteFailed,
        CloseReason::ReadError,
        CloseReason::TlsHandshake,
        CloseReason::TooManyConnections,
        CloseReason::Shutdown,
    ];

    /// Counter name.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Truncated => "truncated_frame",
            CloseReason::Malformed => "malformed_frame",
            CloseReason::SlowClient => "slow_client",
            CloseReason::WriteFailed => "write_failed",
            CloseReason::ReadError => "read_error",
            CloseReason::TlsHandshake => "tls_handshake_failed",
            CloseReason::TooManyConnections => "too_many_connections",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// All server counters (monotonic).
#[derive(Debug, Default)]
pub struct ServerStats {
    requests: [[AtomicU64; Status::ALL.len()]; Opcode::ALL.len()],
    /// Connections accepted.
    pub connections_accepted: AtomicU64,
    closed: [AtomicU64; CloseReason::ALL.len()],
}

fn op_index(op: Opcode) -> usize {
    op as usize - 1
}

impl ServerStats {
    /// Counts one answered request.
    pub fn count(&self, op: Opcode, status: Status) {
        self.requests[op_index(op)][status as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests answered with that opcode and status.
    pub fn get(&self, op: Opcode, status: Status) -> u64 {
        self.requests[op_index(op)][status as usize].load(Ordering::Relaxed)
    }

    /// Counts one connection end.
    pub fn count_close(&self, reason: CloseReason) {
        self.closed[CloseReason::ALL.iter().position(|r| *r == reason).unwrap_or(0)].fetch_add(1, Ordering::Relaxed);
    }

    /// Connections ended for that reason.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[CloseReason::ALL.iter().position(|r| *r == reason).unwrap_or(0)].load(Ordering::Relaxed)
    }

    /// Total requests answered.
    pub fn total_requests(&self) -> u64 {
        self.requests.iter().flatten().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Text rendering (answer to the Stats opcode and the periodic log): one
    /// `name value` line per non-zero counter.
    pub fn render(&self, keys: &KeyStore) -> String {
        let mut s = String::new();
        for op in Opcode::ALL {
            for st in Status::ALL {
                let v = self.get(op, st);
                if v > 0 {
                    let _ = writeln!(s, "requests{{op={},status={}}} {v}", op.name(), st.name());
                }
            }
        }
        let _ = writeln!(
            s,
            "connections_accepted {}",
            self.connections_accepted.load(Ordering::Relaxed)
        );
        for r in CloseReason::ALL {
            let v = self.closed(r);
            if v > 0 {
                let _ = writeln!(s, "connections_closed{{reason={}}} {v}", r.name());
            }
        }
        for k in keys.entries() {
            let _ = writeln!(
                s,
                "key{{file={},id={}}} signed={} refused={}",
                k.file_name,
                k.id.short(),
                k.signed.load(Ordering::Relaxed),
                k.refused.load(Ordering::Relaxed)
            );
        }
        s
    }
}
