//! Test support for xlb: the netns [`lab`] harness and the [`appliance`] runner.
pub mod appliance;
pub mod lab;
