//! `[ha]`: the node's part in an HA pair (VRRP election, session sync, what moves on takeover).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use xlb_l4::conn::Timeouts;
use xlb_l4::sync_policy::SyncPolicy;
use xlb_stack::addr::Ipv4Net;
use xlb_stack::config::InterfaceConfig;

/// `[ha]` settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// VRRP virtual router id (1-255), the same on every node of the pair.
    pub vrid: u8,
    /// VRRP priority (1-254; the higher wins).
    pub priority: u8,
    /// Advertisement interval in centiseconds (default 100 = 1 s; sub-second allowed, e.g. 20).
    #[serde(default = "default_advert")]
    pub advert_interval_cs: u16,
    /// Take mastership back from a lower-priority master (default true).
    #[serde(default = "default_true")]
    pub preempt: bool,
    /// Wait this long before preempting (ms).
    #[serde(default)]
    pub preempt_delay_ms: u64,
    /// Interface of the VRRP and sync traffic (on the datapath); xlb's first address on it is the source.
    pub interface: String,
    /// VIPs that move with mastership (default: every listener's VIP).
    #[serde(default)]
    pub vips: Vec<Ipv4Addr>,
    /// Floating local IPs with prefix (`198.19.0.20/24`): FULLNAT sources that move with mastership, so
    /// backends' replies for synced connections reach the new master.
    #[serde(default, with = "nets")]
    pub local_ips: Vec<Ipv4Net>,
    /// Multicast group and port of session sync.
    #[serde(default = "default_group")]
    pub sync_group: SocketAddrV4,
    /// A connection is synced after this many client packets (default 3).
    #[serde(default = "default_threshold")]
    pub sync_threshold: u32,
    /// A synced connection with traffic is synced again this many seconds after its last sync (default 30;
    /// at most half its state's timeout), so the peers' copies of long-lived flows do not expire. Must be
    /// below `l4.timeouts.tcp_established` and `l4.timeouts.udp`.
    #[serde(default = "default_refresh")]
    pub sync_refresh_s: u32,
    /// File with the shared key (at least 32 bytes) authenticating VRRP-independent sync messages.
    pub auth_key_file: PathBuf,
    /// Unicast peers: sync messages also go to them (for networks without multicast).
    #[serde(default)]
    pub peers: Vec<Ipv4Addr>,
}

fn default_advert() -> u16 {
    100
}

fn default_true() -> bool {
    true
}

fn default_group() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 81), 8848)
}

fn default_threshold() -> u32 {
    3
}

fn default_refresh() -> u32 {
    30
}

mod nets {
    use serde::{Deserialize, Deserializer, Serializer};
    use xlb_stack::addr::Ipv4Net;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ipv4Net>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .collect()
    }

    pub fn serialize<S: Serializer>(nets: &[Ipv4Net], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(nets.iter().map(|n| n.to_string()))
    }
}

impl HaConfig {
    /// The session-sync policy the workers apply.
    pub fn sync_policy(&self) -> SyncPolicy {
        SyncPolicy {
            threshold: self.sync_threshold,
            refresh: Duration::from_secs(u64::from(self.sync_refresh_s)),
        }
    }

    /// Checks the section against the interfaces and the connection timeouts; names the field.
    pub fn validate(&self, interfaces: &[InterfaceConfig], timeouts: &Timeouts) -> Result<(), String> {
        if self.vrid == 0 {
            return Err("ha.vrid: must be 1-255".into());
        }
        if self.priority == 0 || self.priority == 255 {
            return Err("ha.priority: must be 1-254 (xlb never owns the VIPs as interface addresses)".into());
        }
        if self.advert_interval_cs == 0 || self.advert_interval_cs > 4095 {
            return Err("ha.advert_interval_cs: must be 1-4095".into());
        }
        let Some(iface) = interfaces.iter().find(|i| i.name == self.interface) else {
            return Err(format!("ha.interface: no [[interface]] named {:?}", self.interface));
        };
        if iface.addresses.is_empty() {
            return Err(format!(
                "ha.interface: {} has no address to send VRRP and sync from",
                self.interface
            ));
        }
        if !self.sync_group.ip().is_multicast() {
            return Err(format!(
                "ha.sync_group: {} is not a multicast address",
                self.sync_group.ip()
            ));
        }
        if self.sync_threshold == 0 {
            return Err("ha.sync_threshold: must be at least 1".into());
        }
        self.sync_policy()
            .validate(timeouts)
            .map_err(|e| format!("ha.sync_refresh_s: {e}"))?;
        match std::fs::metadata(&self.auth_key_file) {
            Ok(m) if m.len() >= 32 => {}
            Ok(m) => {
                return Err(format!(
                    "ha.auth_key_file: {} holds {} bytes; the shared key needs at least 32",
                    self.auth_key_file.display(),
                    m.len()
                ))
            }
            Err(e) => return Err(format!("ha.auth_key_file: {}: {e}", self.auth_key_file.display())),
        }
        for net in &self.local_ips {
            if !interfaces
                .iter()
                .any(|i| i.addresses.iter().any(|a| a.prefix < 32 && a.contains(net.addr)))
            {
                return Err(format!("ha.local_ips: {net} is on no interface's subnet"));
            }
            if interfaces
                .iter()
                .any(|i| i.addresses.iter().any(|a| a.addr == net.addr))
            {
                return Err(format!(
                    "ha.local_ips: {} is an interface address (floating IPs must be separate)",
                    net.addr
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interfaces() -> Vec<InterfaceConfig> {
        let ext0 = r#"
            name = "ext0"
            queues = [0]
            cores = [0]
            addresses = ["198.18.0.10/24"]
        "#;
        vec![toml::from_str(ext0).unwrap()]
    }

    fn ha(key: &std::path::Path) -> HaConfig {
        toml::from_str(&format!(
            "vrid = 51\npriority = 100\ninterface = \"ext0\"\nlocal_ips = [\"198.18.0.20/24\"]\nauth_key_file = {:?}\n",
            key.display().to_string()
        ))
        .unwrap()
    }

    #[test]
    fn fields_are_checked_and_named() {
        let dir = std::env::temp_dir().join(format!("xlb-ha-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        std::fs::write(&key, [7u8; 40]).unwrap();
        let ifs = interfaces();
        let timeouts = Timeouts::default();
        let good = ha(&key);
        assert_eq!(
            (
                good.advert_interval_cs,
                good.sync_threshold,
                good.sync_refresh_s,
                good.preempt
            ),
            (100, 3, 30, true)
        );
        good.validate(&ifs, &timeouts).unwrap();
        let cases: Vec<(HaConfig, &str)> = vec![
            (
                HaConfig {
                    vrid: 0,
                    ..good.clone()
                },
                "ha.vrid",
            ),
            (
                HaConfig {
                    priority: 255,
                    ..good.clone()
                },
                "ha.priority",
            ),
            (
                HaConfig {
                    interface: "eth9".into(),
                    ..good.clone()
                },
                "ha.interface",
            ),
            (
                HaConfig {
                    sync_group: "198.18.0.1:8848".parse().unwrap(),
                    ..good.clone()
                },
                "ha.sync_group",
            ),
            (
                HaConfig {
                    local_ips: vec!["198.18.0.10/24".parse().unwrap()],
                    ..good.clone()
                },
                "ha.local_ips",
            ),
            (
                HaConfig {
                    auth_key_file: dir.join("missing"),
                    ..good.clone()
                },
                "ha.auth_key_file",
            ),
            (
                HaConfig {
                    sync_refresh_s: 0,
                    ..good.clone()
                },
                "ha.sync_refresh_s",
            ),
        ];
        for (c, field) in cases {
            let e = c.validate(&ifs, &timeouts).unwrap_err();
            assert!(e.starts_with(field), "expected {field}: {e}");
        }
        // The refresh must be below the established and UDP timeouts.
        let short = Timeouts {
            tcp_established: 30,
            ..Timeouts::default()
        };
        assert_eq!(
            good.validate(&ifs, &short).unwrap_err(),
            "ha.sync_refresh_s: 30 s is not below l4.timeouts.tcp_established (30 s): backups would drop live \
             flows between refreshes"
        );
        let udp = Timeouts {
            udp: 10,
            ..Timeouts::default()
        };
        let e = good.validate(&ifs, &udp).unwrap_err();
        assert!(
            e.starts_with("ha.sync_refresh_s: 30 s is not below l4.timeouts.udp (10 s)"),
            "{e}"
        );
        HaConfig {
            sync_refresh_s: 9,
            ..good.clone()
        }
        .validate(&ifs, &udp)
        .unwrap();
        std::fs::write(&key, b"short").unwrap();
        assert!(good.validate(&ifs, &timeouts).unwrap_err().contains("at least 32"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
