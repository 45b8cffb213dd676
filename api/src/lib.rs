//! The xlb control API as types: every route's request and response body ([`routes`]), the stats document of
//! `GET /v1/stats` ([`stats`]), and a small blocking client ([`client`]). The daemon serializes these types and
//! `xlbctl` deserializes them, so a renamed or retyped field is a compile error on one side, not a silently missing
//! number on the other.
//!
//! This crate depends on serde, serde_json and httparse only: `xlbctl` builds from it without the datapath (no
//! clang, libbpf, libxdp or xsk-rs).

pub mod client;
pub mod node;
pub mod routes;
pub mod stats;

pub use routes::*;
pub use stats::*;
