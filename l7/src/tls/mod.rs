//! HTTPS: TLS terminated in the worker's own stack with rustls, driven as a buffer transformer.
//!
//! - [`config`]: the `tls` table of an `https` listener (certificates, policy, ALPN) and the rustls
//!   `ServerConfig` built from it, shared by every worker (one ticket key rotator per listener, so a ticket
//!   issued by one worker resumes on any other; a bounded session cache for TLS 1.2 session ids).
//! - [`certs`]: the SNI certificate store (exact names, then wildcards, then the default), replaceable live.
//! - [`policy`]: TLS security policies by name (versions, cipher suites, key-exchange groups).
//! - [`handshake`]: the handshake pool. rustls signs synchronously, so a handshake's asymmetric crypto (ECDHE,
//!   the certificate signature, a Key Server round trip) never runs on a datapath worker: the connection's
//!   `ServerConnection` travels to a pool thread with the bytes the client sent and comes back with the bytes
//!   to answer. Resumptions have their own lane, so a slow Key Server cannot hold them up.
//! - [`subject`]: a client certificate's subject as text, for the upstream request (mutual TLS).
//! - [`link`]: the TLS of one in-stack connection as the session sees it (a client's, or one towards a server):
//!   ciphertext from and to the socket, plaintext to and from the HTTP proxy.
//! - [`upstream`]: HTTPS to servers — a group's `tls` table and the client side built from it.

pub mod certs;
pub mod client_hello;
pub mod config;
pub mod handshake;
pub mod link;
pub mod policy;
pub mod subject;
pub mod upstream;

#[cfg(test)]
pub(crate) mod testpki;
#[cfg(test)]
mod tests;
