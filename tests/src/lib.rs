//! Test support for xlb: the netns [`lab`] harness, the [`appliance`] runner and a [`keepalived`] peer.
pub mod appliance;
pub mod keepalived;
pub mod lab;
