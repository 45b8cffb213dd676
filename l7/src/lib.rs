//! L7: the sans-IO HTTP/1.1 proxy core for `protocol = "http"` listeners.
//!
//! Everything here is a plain state machine over byte buffers with time passed in: no sockets, clocks, threads or
//! async. The datapath (in-stack TCP termination, upstream connections, scheduling, health) drives it; that glue
//! is not written yet.
//!
//! - [`http1`]: request/response head parsing with RFC 9112 smuggling defences, body framing (Content-Length and
//!   chunked decoders/encoders), header rewriting for the upstream request and the client response.
//! - [`rules`]: listener rules (host, path prefix → group, redirect or fixed response).
//! - [`sticky`]: `Cookie` parsing and the insert / rewrite sticky-session cookies.
//! - [`config`]: the serde config (`[l7]` limits and timeouts, listener rules, sticky) and its validation.
//! - [`drops`]: the L7 stage's drop reasons (after the L4 forwarder's).
//! - [`proxy`]: the per-connection proxy state machine ([`proxy::HttpProxy`]).
//! - [`h2`]: HTTP/2 to clients ([`h2::H2Front`]), each stream mapped to one HTTP/1.1 exchange of its own proxy.

pub mod affinity;
pub mod config;
pub mod drops;
pub mod h2;
pub mod http1;
pub mod proxy;
pub mod rules;
pub mod stage;
pub mod sticky;
pub mod tcp;
pub mod tls;

#[cfg(test)]
mod testutil;
