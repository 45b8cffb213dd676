//! High availability (VRRP v3 election, session sync over multicast, takeover).
//!
//! Not implemented yet: this crate is the home of the HA issue (#6).
