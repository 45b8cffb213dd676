//! L4 load balancing: TCP and UDP listeners on VIP:port forwarded to server groups (FULLNAT and DR), with a
//! per-worker connection table, IPVS-style schedulers and health checks. Everything here is sans-IO.
//!
//! - [`sched`]: schedulers (rr, wrr, wlc, sh, mh) and the Maglev table.
//! - [`health`]: health-check state machines (tcp, udp, http probes from the appliance's own stack).

pub mod health;
pub mod sched;
