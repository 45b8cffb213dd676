//! Where the node's traffic lives: the interface each VIP is announced on, the floating local IPs, the HA
//! interface and source address, and the HA threads' ends of the datapath channels. Both the worker setup
//! ([`crate::lb`]) and the HA driver ([`crate::ha`]) use these; neither imports the other.

use std::net::Ipv4Addr;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use xlb_l4::config::ListenerConfig;
use xlb_l4::forward::ha_tap::HaOutbound;
use xlb_stack::wake::Wake;

use crate::config::Config;

/// The interface index the VIP of `listener` is announced on: its `interface`, else the interface whose subnet
/// holds the VIP, else the first.
pub fn vip_interface(config: &Config, listener: &ListenerConfig) -> usize {
    if let Some(name) = &listener.interface {
        return config.interfaces.iter().position(|i| &i.name == name).unwrap_or(0);
    }
    config
        .interfaces
        .iter()
        .position(|i| i.addresses.iter().any(|n| n.prefix < 32 && n.contains(listener.vip)))
        .unwrap_or(0)
}

/// Floating local IPs of the `[ha]` section, as (interface index, address).
pub fn floating_ips(config: &Config) -> Vec<(usize, Ipv4Addr)> {
    let Some(ha) = &config.ha else { return Vec::new() };
    ha.local_ips
        .iter()
        .filter_map(|net| {
            let iface = config
                .interfaces
                .iter()
                .position(|i| i.addresses.iter().any(|a| a.prefix < 32 && a.contains(net.addr)))?;
            Some((iface, net.addr))
        })
        .collect()
}

/// Index of the `[ha]` interface among the configured interfaces.
pub fn ha_interface(config: &Config) -> Result<usize, String> {
    let ha = config.ha.as_ref().ok_or("no [ha] section")?;
    config
        .interfaces
        .iter()
        .position(|i| i.name == ha.interface)
        .ok_or_else(|| format!("ha.interface: {} is not a configured [[interface]]", ha.interface))
}

/// The node's HA address: its first address on the HA interface (VRRP and sync are sent from it).
pub fn ha_source(config: &Config) -> Result<Ipv4Addr, String> {
    let i = ha_interface(config)?;
    config.interfaces[i].addresses.first().map(|n| n.addr).ok_or_else(|| {
        format!(
            "ha.interface: {} has no address to send VRRP and sync from",
            config.interfaces[i].name
        )
    })
}

/// The HA threads' ends of the datapath channels (the workers hold the other ends).
pub struct HaLink {
    /// VRRP packets received by any worker.
    pub vrrp: Receiver<Vec<u8>>,
    /// Sync datagrams received by any worker.
    pub sync: Receiver<Vec<u8>>,
    /// Frames for the worker that transmits for HA.
    pub out: Sender<HaOutbound>,
    /// Wakes that worker after something was queued.
    pub wake: Arc<Wake>,
}
