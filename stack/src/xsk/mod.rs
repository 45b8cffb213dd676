//! AF_XDP: ports over xsk-rs, the XDP filter, workers, and the [`Datapath`] that wires them from config.

pub mod datapath;
pub mod filter;
pub mod port;
pub mod worker;

pub use datapath::{Datapath, WorkerPlan};
