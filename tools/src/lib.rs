//! The xlb appliance daemon and its control CLI.
//!
//! - [`config`]: the whole config file (`xlb check` / `xlb run`).
//! - [`control`]: the control API (HTTP+JSON on the node's Unix socket) and its client.
//! - [`stats`]: the stats document served by the control API.
//! - [`daemon`]: `xlb run`: start the datapath, serve the control API, stop cleanly on a signal.

pub mod config;
pub mod control;
pub mod daemon;
pub mod stats;
