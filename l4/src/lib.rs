//! L4 load balancing: TCP and UDP listeners on VIP:port forwarded to server groups (FULLNAT and DR), with a
//! per-worker connection table, IPVS-style schedulers and health checks. Everything here is sans-IO.
//!
//! - [`config`]: `[[listener]]`, `[[group]]`, `[l4]`.
//! - [`drops`]: the forwarder's drop reasons (after the stack's).
//! - [`forward`]: the forwarder stage (FULLNAT, DR, hand-off between workers).
//! - [`layout`]: stable listener / server slots across live reconfigurations.
//! - [`owner`]: which worker owns a flow (the one rule for hand-off, port split and HA imports).
//! - [`stats`]: per listener / server counters and the health board.
//! - [`sync_policy`]: when a connection is announced to HA peers (threshold, state changes, refresh).
//! - [`conn`]: the connection table, state tracking and timer wheel.
//! - [`sched`]: schedulers (rr, wrr, wlc, sh, mh) and the Maglev table.
//! - [`health`]: health-check state machines (tcp, udp, http probes from the appliance's own stack).

pub mod config;
pub mod conn;
pub mod drops;
pub mod forward;
pub mod health;
pub mod layout;
pub mod owner;
pub mod sched;
pub mod stats;
pub mod sync_policy;

#[cfg(test)]
mod testutil;
