//! L4 load balancing (listeners, FULLNAT/DR forwarding, connection table, schedulers, health checks).
//!
//! Not implemented yet: this crate is the home of the L4 issue (#3). It will plug into the stack's
//! [`Pipeline`](../xlb_stack/pipeline/trait.Pipeline.html) as a sans-IO stage.
