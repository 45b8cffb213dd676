//! xlb Key Server: holds TLS private keys and signs handshake transcripts for
//! appliances that hold only certificates ("keyless" TLS).
//!
//! - [`wire`]: the sans-IO framing both sides speak.
//! - [`server`]: the Key Server (`xlb-keyserver` binary).
//! - [`client`]: what the appliance links: [`client::KeyServerClient`] and
//!   [`client::RemoteSigningKey`], a `rustls::sign::SigningKey` whose key stays remote.
//!
//! See `docs/KEYSERVER.md`.

#![warn(missing_docs)]

pub mod cert;
pub mod client;
pub mod config;
pub mod keys;
pub mod server;
pub mod transport;
pub mod wire;

pub use client::{ClientCounters, ClientOptions, ClientTls, Endpoint, KeyServerClient, RemoteSigningKey, SignError};
pub use wire::KeyId;
