//! The xlb appliance daemon (`xlb`). Its control CLI is the `xlbctl` crate; the API types both share are `xlb-api`.
//!
//! - [`access_log`]: the L7 access log: a thread that writes the lines the workers queue.
//! - [`api`]: the control API routes: reads, live configuration changes, reload.
//! - [`config`]: the whole config file (`xlb check` / `xlb run`).
//! - [`control`]: the control API transport (HTTP+JSON on the node's Unix socket, optionally TCP with a token).
//! - [`metrics`]: Prometheus text rendering of the stats document and its HTTP server.
//! - [`stats`]: the stats document served by the control API.
//! - [`drops`]: every drop reason (the stack's, L4's and L7's tables joined, checked at compile time).
//! - [`ha`]: the HA driver: VRRP and session sync over the datapath's HA channels, driving the workers.
//! - [`ha_config`]: the `[ha]` section.
//! - [`http`]: the HTTP server of the control API and metrics (hyper on a single-threaded tokio runtime).
//! - [`lb`]: builds each worker's pipeline (local stack + L4 forwarder + L7 stage) from the config.
//! - [`maglev`]: the thread that has the L4 listeners' Maglev tables rebuilt after health changes.
//! - [`l7`]: what the L7 stage is built from (`http` listeners, groups, `[l7]`) and its checks.
//! - [`placement`]: which interface carries a VIP, the floating IPs, the HA interface; the HA channel ends.
//! - [`daemon`]: `xlb run`: start the datapath, serve the control API, stop cleanly on a signal.
//! - [`fuzzing`]: the entry points of the fuzz targets (`fuzz/`) and of the corpus replay test.

pub mod access_log;
pub mod api;
pub mod config;
pub mod control;
pub mod daemon;
pub mod drops;
pub mod fuzzing;
pub mod ha;
pub mod ha_config;
pub mod http;
pub mod instance;
pub mod key_server;
pub mod l7;
pub mod lb;
pub mod maglev;
pub mod metrics;
pub mod placement;
pub mod stats;
