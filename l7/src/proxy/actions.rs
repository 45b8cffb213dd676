//! What the proxy asks of its driver ([`Action`]) and tells it ([`Event`]), and the ids they use.

use std::time::Instant;

use crate::http1::Refusal;
use crate::rules::GroupId;
use crate::sticky::ServerId;

/// An upstream connection of one client connection (numbered from 0 per client connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamId(pub u32);

/// What the caller must do, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a connection to a server of `group` (to `sticky_server` if it is healthy), then report it with
    /// `handle_upstream_connected` or `handle_upstream_failed`.
    ConnectUpstream {
        /// The new connection's id.
        id: UpstreamId,
        /// Group chosen by the listener rules.
        group: GroupId,
        /// Server named by the sticky cookie.
        sticky_server: Option<ServerId>,
        /// The hash of the request's `hash` header or cookie (consistent hashing picks the server).
        affinity: Option<u64>,
    },
    /// Send bytes to the client.
    SendToClient(Vec<u8>),
    /// Send bytes to an upstream server.
    SendToUpstream(UpstreamId, Vec<u8>),
    /// Close the client connection (after sending what was queued).
    CloseClient,
    /// Close an upstream connection.
    CloseUpstream(UpstreamId),
    /// The proxy is done with an upstream connection that is idle and reusable (its last response was complete
    /// and kept alive, nothing is pending): the caller may keep it for another client connection to the same
    /// server, or close it.
    ReleaseUpstream(UpstreamId),
    /// The connection switched protocols (WebSocket): relay bytes both ways between the client and `upstream`
    /// from now on, starting with unconsumed bytes; the proxy takes no more input.
    Tunnel {
        /// The upstream connection of the tunnel.
        upstream: UpstreamId,
    },
    /// The first request asked for `Upgrade: h2c` and it is taken up ([`super::HttpProxy::offer_h2c`]): answer
    /// 101 and serve the request as stream 1 of HTTP/2 from the unconsumed bytes on; the proxy takes no more
    /// input.
    UpgradeH2c(Box<crate::h2::upgrade::H2cUpgrade>),
}

/// Why an upstream connection could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// The group has no healthy server (503).
    NoHealthyServer,
    /// The server refused the connection (502).
    Refused,
    /// The server reset the connection (502).
    Reset,
}

/// Which timer fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// No new request on a kept-alive connection (closed silently).
    ClientIdle,
    /// Request head not complete in time (408).
    ClientHeader,
    /// Pause in the request body (408 or close).
    ClientBody,
    /// Upstream connection not established (504).
    UpstreamConnect,
    /// No response (504) or a pause in it (close).
    UpstreamResponse,
}

/// Something to count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A request was refused (answered with `reason.status()`).
    ClientRefused(Refusal),
    /// An upstream response was refused (answered 502 if nothing was sent yet).
    UpstreamRefused(Refusal),
    /// A timer fired.
    Timeout(Timer),
    /// An upstream connection failed.
    UpstreamFailed(UpstreamFailure),
    /// A response was completed (`local`: answered by xlb: redirect, fixed response or error).
    Answered {
        /// Status code sent.
        status: u16,
        /// Answered by xlb itself.
        local: bool,
        /// When the request's head was complete (`None` for a request refused before that): the response
        /// time is from then to now.
        started: Option<Instant>,
    },
    /// The exchange was cut short (connection closed mid-message).
    Aborted,
    /// The connection became a tunnel.
    Tunnelled,
    /// Connecting to a server failed or timed out and the idempotent request is sent to another.
    Retried,
}
