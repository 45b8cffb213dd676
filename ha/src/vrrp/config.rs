//! The settings of one virtual router (RFC 5798 §6.1), as the appliance config spells them.
//!
//! Parsing rejects unknown fields; [`VrrpConfig::validate`] checks what parsing cannot and names the field in
//! its error. Durations are written in milliseconds in the config (`preempt_delay_ms`, `garp_interval_ms`).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::packet::{MAX_ADVER_INT_CS, MAX_VIPS};

/// Default priority of a backup-capable router (RFC 5798 §6.1).
pub const DEFAULT_PRIORITY: u8 = 100;
/// Priority of the router that owns the virtual addresses: it is Master at once and never preempted.
pub const OWNER_PRIORITY: u8 = 255;
/// Default advertisement interval: one second.
pub const DEFAULT_ADVERT_INTERVAL_CS: u16 = 100;
/// Default number of gratuitous ARP rounds after becoming Master.
pub const DEFAULT_GARP_REPEAT: u8 = 3;
/// Default time between two gratuitous ARP rounds.
pub const DEFAULT_GARP_INTERVAL: Duration = Duration::from_millis(1000);

/// One virtual router: who we are in the election and which addresses it carries.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VrrpConfig {
    /// Virtual router id, 1..=255; also the last byte of the virtual MAC.
    pub vrid: u8,
    /// Our priority, 1..=254; 255 only on the router that owns the virtual addresses (see [`OWNER_PRIORITY`]).
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// Time between two advertisements while Master, in centiseconds (1..=4095).
    #[serde(default = "default_advert_interval_cs")]
    pub advert_interval_cs: u16,
    /// Whether a Backup with a higher priority than the Master takes over (RFC default: yes).
    #[serde(default = "default_true")]
    pub preempt: bool,
    /// How long a preempting Backup lets a lower-priority Master run before taking over, counted from the
    /// first advert it hears from it. Zero: take over as RFC 5798 says, when the Master_Down_Timer fires.
    #[serde(default, rename = "preempt_delay_ms", with = "duration_ms")]
    pub preempt_delay: Duration,
    /// The virtual addresses (1..=255, no duplicates), in the order they are advertised.
    pub vips: Vec<Ipv4Addr>,
    /// Our primary address on the link: the adverts' source, and the tie-breaker between equal priorities.
    pub source: Ipv4Addr,
    /// Whether the Master accepts packets addressed to the virtual addresses when it does not own them.
    #[serde(default)]
    pub accept_mode: bool,
    /// Rounds of gratuitous ARP (one per virtual address) after becoming Master; 0 sends none.
    #[serde(default = "default_garp_repeat")]
    pub garp_repeat: u8,
    /// Time between two rounds of gratuitous ARP.
    #[serde(default = "default_garp_interval", rename = "garp_interval_ms", with = "duration_ms")]
    pub garp_interval: Duration,
}

impl VrrpConfig {
    /// A virtual router with the RFC defaults: advert interval 1 s, preempt on, no preempt delay, accept mode
    /// off, and [`DEFAULT_GARP_REPEAT`] rounds of gratuitous ARP [`DEFAULT_GARP_INTERVAL`] apart.
    pub fn new(vrid: u8, priority: u8, source: Ipv4Addr, vips: Vec<Ipv4Addr>) -> Self {
        VrrpConfig {
            vrid,
            priority,
            advert_interval_cs: DEFAULT_ADVERT_INTERVAL_CS,
            preempt: true,
            preempt_delay: Duration::ZERO,
            vips,
            source,
            accept_mode: false,
            garp_repeat: DEFAULT_GARP_REPEAT,
            garp_interval: DEFAULT_GARP_INTERVAL,
        }
    }

    /// The advertisement interval as a duration.
    pub fn advert_interval(&self) -> Duration {
        centiseconds(self.advert_interval_cs)
    }

    /// Whether we own the virtual addresses (priority 255).
    pub fn is_owner(&self) -> bool {
        self.priority == OWNER_PRIORITY
    }

    /// Checks what parsing cannot; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.vrid == 0 {
            return Err("vrrp.vrid: must be 1-255".into());
        }
        if self.priority == 0 {
            return Err("vrrp.priority: must be 1-255 (0 is reserved for a Master that stops)".into());
        }
        if self.advert_interval_cs == 0 || self.advert_interval_cs > MAX_ADVER_INT_CS {
            return Err(format!("vrrp.advert_interval_cs: must be 1-{MAX_ADVER_INT_CS}"));
        }
        if self.vips.is_empty() || self.vips.len() > MAX_VIPS {
            return Err(format!("vrrp.vips: must list 1-{MAX_VIPS} addresses"));
        }
        let mut seen = HashSet::with_capacity(self.vips.len());
        for vip in &self.vips {
            if !usable(*vip) {
                return Err(format!("vrrp.vips: {vip} is not a unicast address"));
            }
            if !seen.insert(vip) {
                return Err(format!("vrrp.vips: {vip} is listed twice"));
            }
        }
        if !usable(self.source) {
            return Err(format!("vrrp.source: {} is not a unicast address", self.source));
        }
        if self.garp_repeat > 1 && self.garp_interval.is_zero() {
            return Err("vrrp.garp_interval_ms: must be at least 1 when garp_repeat is above 1".into());
        }
        Ok(())
    }
}

/// `cs` centiseconds as a duration.
pub(crate) fn centiseconds(cs: u16) -> Duration {
    Duration::from_millis(u64::from(cs) * 10)
}

fn usable(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback())
}

fn default_priority() -> u8 {
    DEFAULT_PRIORITY
}

fn default_advert_interval_cs() -> u16 {
    DEFAULT_ADVERT_INTERVAL_CS
}

fn default_true() -> bool {
    true
}

fn default_garp_repeat() -> u8 {
    DEFAULT_GARP_REPEAT
}

fn default_garp_interval() -> Duration {
    DEFAULT_GARP_INTERVAL
}

/// A [`Duration`] written as whole milliseconds.
mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VrrpConfig {
        VrrpConfig::new(
            51,
            100,
            Ipv4Addr::new(198, 18, 0, 1),
            vec![Ipv4Addr::new(198, 18, 9, 100)],
        )
    }

    #[test]
    fn defaults_are_the_rfc_defaults() {
        let c = config();
        assert!(c.validate().is_ok());
        assert_eq!(c.advert_interval(), Duration::from_secs(1));
        assert!(c.preempt && !c.accept_mode && !c.is_owner());
        assert_eq!(c.preempt_delay, Duration::ZERO);
    }

    /// A change that makes a config invalid.
    type Breakage = fn(&mut VrrpConfig);

    #[test]
    fn validate_names_the_field() {
        let cases: Vec<(Breakage, &str)> = vec![
            (|c| c.vrid = 0, "vrrp.vrid"),
            (|c| c.priority = 0, "vrrp.priority"),
            (|c| c.advert_interval_cs = 0, "vrrp.advert_interval_cs"),
            (|c| c.advert_interval_cs = 4096, "vrrp.advert_interval_cs"),
            (|c| c.vips.clear(), "vrrp.vips"),
            (|c| c.vips.push(c.vips[0]), "listed twice"),
            (|c| c.vips.push(Ipv4Addr::new(224, 0, 0, 18)), "not a unicast"),
            (|c| c.vips = vec![Ipv4Addr::new(198, 18, 9, 1); 256], "vrrp.vips"),
            (|c| c.source = Ipv4Addr::UNSPECIFIED, "vrrp.source"),
            (|c| c.garp_interval = Duration::ZERO, "vrrp.garp_interval_ms"),
        ];
        for (change, field) in cases {
            let mut c = config();
            change(&mut c);
            let err = c.validate().expect_err(field);
            assert!(err.contains(field), "{err:?} should name {field}");
        }
        let mut owner = config();
        owner.priority = OWNER_PRIORITY;
        assert!(owner.validate().is_ok() && owner.is_owner());
    }

    #[test]
    fn parses_from_toml_with_defaults_and_rejects_unknown_fields() {
        let c: VrrpConfig = toml::from_str(
            r#"
            vrid = 51
            vips = ["198.18.9.100"]
            source = "198.18.0.1"
            "#,
        )
        .unwrap();
        assert_eq!(c, config());
        let c: VrrpConfig = toml::from_str(
            r#"
            vrid = 7
            priority = 200
            advert_interval_cs = 20
            preempt = false
            preempt_delay_ms = 1500
            vips = ["198.18.9.100", "198.18.9.101"]
            source = "198.18.0.2"
            accept_mode = true
            garp_repeat = 5
            garp_interval_ms = 200
            "#,
        )
        .unwrap();
        assert_eq!(c.preempt_delay, Duration::from_millis(1500));
        assert_eq!(c.garp_interval, Duration::from_millis(200));
        assert_eq!(
            (c.vrid, c.priority, c.advert_interval_cs, c.preempt),
            (7, 200, 20, false)
        );
        let back: VrrpConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let err = toml::from_str::<VrrpConfig>("vrid = 1\nvips = []\nsource = \"198.18.0.1\"\nauth = 1\n");
        assert!(err.is_err());
    }
}
