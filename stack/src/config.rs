//! The datapath's part of the appliance config: `[node]`, `[[interface]]` and `[datapath]`.
//!
//! Parsing rejects unknown fields; [`validate_interfaces`] checks what parsing cannot and names the field.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use crate::addr::Ipv4Net;

/// `[node]`: who this appliance is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name, used in logs and (later) in the HA cluster.
    pub name: String,
    /// Unix socket of the control API (`xlbctl` talks to it).
    pub control_socket: PathBuf,
    /// Prometheus metrics (`GET /metrics`) on this TCP address of a kernel interface (management network, not
    /// the datapath); off if unset.
    #[serde(default)]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// The control API also over HTTP on this TCP address of a kernel interface (management network); every
    /// request must carry `Authorization: Bearer <token>`. Off if unset.
    #[serde(default)]
    pub api_address: Option<std::net::SocketAddr>,
    /// File holding that token (at least 16 characters, surrounding whitespace ignored); required with
    /// `api_address`.
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
}

/// How the XDP filter is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode if the driver supports it, else generic.
    #[default]
    Auto,
    /// Driver mode only; fail if the driver lacks XDP support.
    Native,
    /// Generic (SKB) mode: works on every interface, slower.
    Generic,
}

/// Whether AF_XDP sockets bind in zero-copy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ZeroCopy {
    /// Zero-copy if the driver supports it, else copy mode.
    #[default]
    Auto,
    /// Zero-copy only; fail otherwise.
    On,
    /// Copy mode.
    Off,
}

/// What a worker does when its rings are empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Idle {
    /// Spin: lowest latency, burns its core (appliance default on dedicated cores). Between empty turns it
    /// yields the core to any other runnable thread on it (there is none on an isolated core).
    Busy,
    /// Spin briefly, then sleep in poll(2) on the sockets until traffic or a timer.
    #[default]
    Adaptive,
}

/// `[[interface]]`: a NIC (or veth) the appliance serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    /// Interface name.
    pub name: String,
    /// RX/TX queue ids; one worker per queue.
    pub queues: Vec<u32>,
    /// Core for the worker of `queues[i]`. Queues of different interfaces pinned to the same core share one
    /// worker (and one UMEM), so it can forward between them without copies.
    pub cores: Vec<usize>,
    /// XDP attach mode.
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// AF_XDP zero-copy mode.
    #[serde(default)]
    pub zero_copy: ZeroCopy,
    /// Idle strategy of this interface's workers.
    #[serde(default)]
    pub idle: Idle,
    /// The appliance's own addresses on this link, with prefix (`198.18.0.10/24`).
    #[serde(deserialize_with = "nets")]
    pub addresses: Vec<Ipv4Net>,
    /// Next hop for destinations outside this link's subnets.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
}

/// `[datapath]`: ring and batch sizes (optional; defaults suit a 10G NIC queue).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatapathConfig {
    /// Frames processed per RX/TX batch.
    pub batch_size: usize,
    /// UMEM frames per worker.
    pub umem_frames: u32,
    /// Size of each RX, TX, fill and completion ring (power of two).
    pub ring_size: u32,
    /// ARP entries per worker.
    pub neighbours: usize,
    /// ICMP errors and TCP resets per second per worker.
    pub icmp_rate: u32,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            batch_size: 64,
            umem_frames: 8192,
            ring_size: 2048,
            neighbours: 4096,
            icmp_rate: 1000,
        }
    }
}

fn nets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ipv4Net>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// Checks interfaces and datapath settings beyond what parsing checks. The error names the field.
pub fn validate_interfaces(interfaces: &[InterfaceConfig], datapath: &DatapathConfig) -> Result<(), String> {
    if interfaces.is_empty() {
        return Err("interface: at least one [[interface]] is required".into());
    }
    let mut names = HashSet::new();
    let mut owned = HashSet::new();
    for (i, iface) in interfaces.iter().enumerate() {
        let at = format!("interface[{i}] ({})", iface.name);
        if iface.name.is_empty() || iface.name.len() > 15 {
            return Err(format!("{at}.name: must be 1-15 characters"));
        }
        if !names.insert(&iface.name) {
            return Err(format!("{at}.name: interface listed twice"));
        }
        if iface.queues.is_empty() {
            return Err(format!("{at}.queues: at least one queue is required"));
        }
        if iface.cores.len() != iface.queues.len() {
            return Err(format!(
                "{at}.cores: {} entries, but queues has {} (one core per queue)",
                iface.cores.len(),
                iface.queues.len()
            ));
        }
        if iface.queues.iter().collect::<HashSet<_>>().len() != iface.queues.len() {
            return Err(format!("{at}.queues: a queue is listed twice"));
        }
        if iface.cores.iter().collect::<HashSet<_>>().len() != iface.cores.len() {
            return Err(format!("{at}.cores: two queues of one interface on one core"));
        }
        if iface.addresses.is_empty() {
            return Err(format!("{at}.addresses: at least one address is required"));
        }
        for net in &iface.addresses {
            if !owned.insert(net.addr) {
                return Err(format!("{at}.addresses: {} is configured twice", net.addr));
            }
        }
        if let Some(gw) = iface.gateway {
            if !iface.addresses.iter().any(|n| n.contains(gw)) {
                return Err(format!(
                    "{at}.gateway: {gw} is not inside any of this interface's addresses' subnets"
                ));
            }
        }
        if iface.zero_copy == ZeroCopy::On && iface.xdp_mode == XdpMode::Generic {
            return Err(format!(
                "{at}.zero_copy: \"on\" needs xdp_mode native or auto (generic mode always copies)"
            ));
        }
    }
    let cores = core_affinity::get_core_ids().map(|c| c.len()).unwrap_or(usize::MAX);
    for (i, iface) in interfaces.iter().enumerate() {
        if let Some(c) = iface.cores.iter().find(|c| **c >= cores) {
            return Err(format!(
                "interface[{i}] ({}).cores: core {c} does not exist (this machine has {cores})",
                iface.name
            ));
        }
    }
    if datapath.batch_size == 0 || datapath.batch_size > 1024 {
        return Err("datapath.batch_size: must be 1-1024".into());
    }
    if !datapath.ring_size.is_power_of_two() || datapath.ring_size < 64 {
        return Err("datapath.ring_size: must be a power of two >= 64".into());
    }
    let ports = interfaces.len() as u32;
    if datapath.umem_frames < datapath.ring_size * 2 * ports {
        return Err(format!(
            "datapath.umem_frames: {} is too few for {} port(s) with ring_size {} (need at least ring_size x 2 per port)",
            datapath.umem_frames, ports, datapath.ring_size
        ));
    }
    if datapath.neighbours == 0 {
        return Err("datapath.neighbours: must be at least 1".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(toml_src: &str) -> Result<InterfaceConfig, String> {
        toml::from_str(toml_src).map_err(|e| e.to_string())
    }

    const GOOD: &str = r#"
        name = "ext0"
        queues = [0]
        cores = [0]
        addresses = ["198.18.0.10/24"]
    "#;

    #[test]
    fn defaults_apply() {
        let i = iface(GOOD).unwrap();
        assert_eq!(
            (i.xdp_mode, i.zero_copy, i.idle),
            (XdpMode::Auto, ZeroCopy::Auto, Idle::Adaptive)
        );
        validate_interfaces(&[i], &DatapathConfig::default()).unwrap();
    }

    #[test]
    fn bad_fields_are_named() {
        let e = iface(&GOOD.replace("queues", "queus")).unwrap_err();
        assert!(e.contains("queus"), "{e}");
        let e = iface(&GOOD.replace("198.18.0.10/24", "198.18.0.10/40")).unwrap_err();
        assert!(e.contains("prefix length 40"), "{e}");
        let e = iface(&format!("{GOOD}\nxdp_mode = \"turbo\"")).unwrap_err();
        assert!(e.contains("turbo"), "{e}");

        let mut i = iface(GOOD).unwrap();
        i.cores = vec![0, 1];
        let e = validate_interfaces(&[i], &DatapathConfig::default()).unwrap_err();
        assert!(e.starts_with("interface[0] (ext0).cores"), "{e}");

        let mut i = iface(GOOD).unwrap();
        i.gateway = Some(Ipv4Addr::new(10, 0, 0, 1));
        let e = validate_interfaces(&[i], &DatapathConfig::default()).unwrap_err();
        assert!(e.contains(".gateway"), "{e}");

        let e = validate_interfaces(
            &[iface(GOOD).unwrap(), iface(GOOD).unwrap()],
            &DatapathConfig::default(),
        )
        .unwrap_err();
        assert!(e.contains("listed twice"), "{e}");

        let dp = DatapathConfig {
            ring_size: 1000,
            ..Default::default()
        };
        let e = validate_interfaces(&[iface(GOOD).unwrap()], &dp).unwrap_err();
        assert!(e.starts_with("datapath.ring_size"), "{e}");
    }
}
