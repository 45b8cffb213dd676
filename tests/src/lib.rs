//! Lab harness: see [`lab`].
pub mod lab;
