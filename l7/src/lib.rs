//! L7 (HTTP/HTTPS termination in-stack, forwarding rules, Key Server client).
//!
//! Not implemented yet: L7 follows milestone 1 (the L4 half).
