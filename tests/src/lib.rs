//! Test support for xlb: the netns [`lab`] harness, the [`appliance`] runner, NGINX [`backends`], a [`keepalived`] peer, shared
//! [`topology`]s and client-side [`traffic`].
pub mod appliance;
pub mod backends;
pub mod keepalived;
pub mod lab;
pub mod pki;
pub mod topology;
pub mod traffic;
