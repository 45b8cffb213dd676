//! Load generators and backend servers for benchmarking xlb.
//!
//! The [`gen`] module holds everything behind the `xlb-bench` binary: TCP
//! connection-rate, UDP request/response and blast, and HTTP/1.1 load
//! generators, plus the `sink` backend server they are measured against.

pub mod gen;
pub mod l7scale;
pub mod scale;
pub mod suite;
