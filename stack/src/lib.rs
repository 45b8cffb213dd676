//! xlb's datapath.
//!
//! - [`wire`]: zero-copy packet views and builders, checksums.
//! - [`local`]: the appliance's own presence on its links (ARP, ICMP echo, RST/unreachable), sans-IO.
//! - [`neighbour`]: ARP resolution of next hops, sans-IO.
//! - [`offload`]: partial checksums from peers with TX checksum offload, and the hint that names the fix.
//! - [`pipeline`]: the contract between a worker and the packet logic it drives.
//! - [`ports`]: the worker's local ports, shared by the stages that connect to servers (L4 FULLNAT, L7).
//! - [`service`]: what each address:port of the appliance is, so one lookup decides the stage that serves it.
//! - [`xsk`]: AF_XDP ports (UMEM, rings), the XDP filter program, and run-to-completion workers.
//! - [`counters`]: per-worker counters readable while the datapath runs.
//! - [`drops`]: drop reasons, each declared by the crate whose stage drops for it.
//! - [`config`]: the `[node]` and `[[interface]]` parts of the appliance config.

pub mod addr;
pub mod config;
pub mod counters;
pub mod drops;
pub mod local;
pub mod neighbour;
pub mod offload;
pub mod pipeline;
pub mod ports;
pub mod reflect;
pub mod service;
pub mod stages;
pub mod wake;
pub mod wire;
pub mod xsk;

#[cfg(test)]
mod testutil;
