//! The xlb appliance daemon and its control CLI.
//!
//! - [`api`]: the control API routes: reads, live configuration changes, reload.
//! - [`config`]: the whole config file (`xlb check` / `xlb run`).
//! - [`control`]: the control API (HTTP+JSON on the node's Unix socket) and its client.
//! - [`metrics`]: Prometheus text rendering of the stats document and its HTTP server.
//! - [`stats`]: the stats document served by the control API.
//! - [`lb`]: builds each worker's pipeline (local stack + L4 forwarder) from the config.
//! - [`daemon`]: `xlb run`: start the datapath, serve the control API, stop cleanly on a signal.

pub mod api;
pub mod config;
pub mod control;
pub mod daemon;
pub mod lb;
pub mod metrics;
pub mod stats;
