//! VRRP version 3 for IPv4 (RFC 5798): electing which appliance holds the virtual addresses (sans-IO).
//!
//! [`VrrpRouter`] is one virtual router on one link. It opens no socket and reads no clock: the caller passes
//! time in, offers received advertisements with [`VrrpRouter::handle_advertisement`], pulls the packets to
//! send with [`VrrpRouter::poll_transmit`] (complete IPv4 packets to 224.0.0.18; the caller adds the Ethernet
//! header, with the [`virtual_mac`] as source if the deployment uses it), the addresses to announce with
//! [`VrrpRouter::poll_garp`], and the state changes with [`VrrpRouter::poll_event`], and sleeps until
//! [`VrrpRouter::poll_timeout`] to call [`VrrpRouter::handle_timeout`]. The core logs nothing; the caller
//! logs the events and takes or releases the virtual addresses on them.
//!
//! # Semantics (RFC 5798 §6)
//!
//! - [`VrrpRouter::start`]: the address owner (priority 255) is Master at once; every other router starts as
//!   Backup and becomes Master if it hears no advert for [`VrrpRouter::master_down_interval`]
//!   (`3 x Master_Adver_Interval + Skew_Time`, `Skew_Time = (256 - priority) x Master_Adver_Interval / 256`,
//!   so higher priorities wait less and win a simultaneous start).
//! - Backup: an advert with priority 0 (the Master is stopping) cuts the wait to `Skew_Time`. An advert with
//!   a priority at least ours, or any advert when `preempt` is off, restarts the wait and teaches us the
//!   Master's advert interval. An advert with a lower priority is ignored when `preempt` is on, so the wait
//!   runs out and we take over; with a `preempt_delay`, the lower-priority Master is instead kept for that
//!   long after we first hear it, then we take over at once.
//! - Master: sends an advert every `advert_interval_cs`, and at once when it hears a priority-0 advert (so a
//!   stopping peer's Backups see a Master). It yields to an advert with a higher priority, or the same
//!   priority from a higher primary address.
//! - [`VrrpRouter::shutdown`]: a Master sends a last advert with priority 0, so a Backup takes over within
//!   `Skew_Time` rather than the whole Master_Down_Interval.
//!
//! Received adverts are checked as §7.1 requires (TTL 255, version 3, type 1, complete packet, checksum over
//! the pseudo-header, our VRID, not the address owner) and rejected with a [`VrrpError`] that changes no
//! state (only [`VrrpCounters`]). An advert whose addresses differ from ours is a misconfiguration: it is
//! counted and reported once with [`VrrpEvent::AddressMismatch`], and still processed.
//!
//! # Not here
//!
//! Sending on the virtual MAC, answering ARP for the addresses and accepting their traffic are the caller's:
//! [`VrrpRouter::is_master`] and [`VrrpRouter::accepts_vip_traffic`] say when.

mod config;
mod packet;
mod router;

#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;

use serde::Serialize;

pub use config::{
    VrrpConfig, DEFAULT_ADVERT_INTERVAL_CS, DEFAULT_GARP_INTERVAL, DEFAULT_GARP_REPEAT, DEFAULT_PRIORITY,
    OWNER_PRIORITY,
};
pub use packet::{
    advert_len, build_advert, emit_advert, open_envelope, packet_len, virtual_mac, VrrpPacket, HEADER_LEN,
    MAX_ADVER_INT_CS, MAX_PACKET_LEN, MAX_VIPS, TYPE_ADVERTISEMENT, VRRP_MULTICAST, VRRP_PROTOCOL, VRRP_TTL,
    VRRP_VERSION,
};
pub use router::VrrpRouter;

/// The RFC 5798 state of a virtual router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum VrrpState {
    /// Not running: before [`VrrpRouter::start`] and after [`VrrpRouter::shutdown`].
    Initialize,
    /// Listening to a Master, ready to take over.
    Backup,
    /// Holding the virtual addresses and advertising.
    Master,
}

/// Something the caller acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VrrpEvent {
    /// We are Master: take the virtual addresses (answer ARP for them, accept or forward their traffic).
    /// Gratuitous ARPs follow through [`VrrpRouter::poll_garp`].
    BecameMaster,
    /// We are Backup (after [`VrrpRouter::start`], or a Master yielding): release the virtual addresses.
    BecameBackup,
    /// [`VrrpRouter::shutdown`] stopped us: release the virtual addresses.
    Stopped,
    /// The router at `from` advertises other addresses than ours for our VRID: a misconfiguration to log
    /// (RFC 5798 §7.1). Reported once until its adverts match again or another sender disagrees.
    AddressMismatch {
        /// The sender's primary address.
        from: Ipv4Addr,
    },
}

/// Why a received advertisement was rejected. Each also bumps a counter in [`VrrpCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VrrpError {
    /// The packet is shorter than the VRRP header or than the addresses its count announces.
    #[error("VRRP packet truncated: {len} bytes, the header and its addresses need {needed}")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes the header says there are.
        needed: usize,
    },
    /// The IPv4 TTL is not 255: the packet crossed a router (or was forged off-link).
    #[error("VRRP advert with IPv4 TTL {0}: must be 255 (sent from off-link?)")]
    BadTtl(u8),
    /// Not VRRP version 3 (a version 2 peer, or keepalived without `vrrp_version 3`).
    #[error("VRRP version {0}: this router speaks version 3 only")]
    BadVersion(u8),
    /// Not an advertisement (the only type defined).
    #[error("VRRP message type {0}: only 1 (advertisement) is defined")]
    BadType(u8),
    /// The checksum does not match (the v3 checksum covers the IPv4 pseudo-header).
    #[error("VRRP checksum {found:#06x} is wrong, expected {expected:#06x} (covering the IPv4 pseudo-header)")]
    BadChecksum {
        /// The checksum in the packet.
        found: u16,
        /// The checksum the packet should carry.
        expected: u16,
    },
    /// The advert is for another virtual router (the caller demultiplexes by VRID).
    #[error("VRRP advert for VRID {got}, this router is VRID {ours}")]
    WrongVrid {
        /// VRID in the packet.
        got: u8,
        /// Our VRID.
        ours: u8,
    },
    /// We own the addresses (priority 255): RFC 5798 §7.1 has the owner discard every advert for its VRID.
    #[error("VRRP advert for VRID {0} discarded: this router owns the addresses (priority 255)")]
    AddressOwner(u8),
    /// Max Adver Int of zero, which would make the Backups' timers expire at once.
    #[error("VRRP advert with an advertisement interval of 0")]
    ZeroInterval,
    /// Our own advert, looped back by the network.
    #[error("VRRP advert from our own address {0} (looped back)")]
    OwnPacket(Ipv4Addr),
}

/// What a virtual router did, for `xlbctl stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct VrrpCounters {
    /// Adverts written by [`VrrpRouter::poll_transmit`] (priority-0 ones included).
    pub adverts_sent: u64,
    /// Of those, priority-0 adverts (clean hand-over on shutdown).
    pub priority_zero_sent: u64,
    /// Adverts that passed every check.
    pub adverts_received: u64,
    /// Of those, priority-0 adverts (a Master stopping).
    pub priority_zero_received: u64,
    /// Valid adverts the state machine discarded: a lower-priority Master heard by a preempting Backup or
    /// by a Master, or any advert while not running.
    pub adverts_discarded: u64,
    /// Rejected: shorter than the header or its addresses.
    pub truncated: u64,
    /// Rejected: TTL not 255.
    pub bad_ttl: u64,
    /// Rejected: version not 3.
    pub bad_version: u64,
    /// Rejected: type not 1.
    pub bad_type: u64,
    /// Rejected: wrong checksum.
    pub bad_checksum: u64,
    /// Rejected: another VRID.
    pub bad_vrid: u64,
    /// Rejected: advertisement interval 0.
    pub bad_interval: u64,
    /// Rejected: we are the address owner.
    pub owner_discards: u64,
    /// Rejected: our own advert looped back.
    pub own_adverts: u64,
    /// Valid adverts listing other addresses than ours (processed all the same).
    pub address_mismatch: u64,
    /// Gratuitous ARPs handed out by [`VrrpRouter::poll_garp`].
    pub garps: u64,
    /// Transitions to Master.
    pub became_master: u64,
    /// Transitions to Backup.
    pub became_backup: u64,
    /// Shutdowns of a running router.
    pub stopped: u64,
}

impl VrrpCounters {
    /// Adverts rejected by the §7.1 checks, all reasons together.
    pub fn rejected(&self) -> u64 {
        self.truncated
            + self.bad_ttl
            + self.bad_version
            + self.bad_type
            + self.bad_checksum
            + self.bad_vrid
            + self.bad_interval
            + self.owner_discards
            + self.own_adverts
    }
}
