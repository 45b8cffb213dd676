//! L4 config: `[[listener]]`, `[[group]]` and `[l4]`, with validation that names the bad field.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::Deserialize;
use xlb_stack::config::InterfaceConfig;

use crate::conn::{Forwarding, Proto, Timeouts};
use crate::health::HealthCheckConfig;
use crate::sched::SchedulerKind;

/// What happens to established connections of a server that is removed from its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RemovedServerPolicy {
    /// Keep forwarding them until they end (IPVS `expire_nodest_conn=0`).
    #[default]
    Keep,
    /// Reset them: the client's next packet is answered with an RST (TCP) or ICMP unreachable (UDP).
    Reset,
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// TCP forwarded by L4.
    Tcp,
    /// UDP forwarded by L4.
    Udp,
    /// HTTP/1.1 terminated in-stack and proxied by L7 (always FULLNAT: xlb opens the upstream connections).
    Http,
    /// HTTPS: TLS and HTTP terminated in-stack by L7 (the `tls` table), proxied like `http`.
    Https,
}

impl ListenerProtocol {
    /// The transport protocol of the listener's VIP:port.
    pub fn transport(self) -> Proto {
        match self {
            ListenerProtocol::Tcp | ListenerProtocol::Http | ListenerProtocol::Https => Proto::Tcp,
            ListenerProtocol::Udp => Proto::Udp,
        }
    }

    /// Whether L4 forwards the listener's flows (else L7 terminates them).
    pub fn is_l4(self) -> bool {
        !self.is_l7()
    }

    /// Whether L7 terminates the listener's connections (`http`, `https`).
    pub fn is_l7(self) -> bool {
        matches!(self, ListenerProtocol::Http | ListenerProtocol::Https)
    }
}

impl From<Proto> for ListenerProtocol {
    fn from(p: Proto) -> Self {
        match p {
            Proto::Tcp => ListenerProtocol::Tcp,
            Proto::Udp => ListenerProtocol::Udp,
        }
    }
}

/// `[[listener]]`: a VIP:port served by a group.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name (stats, logs).
    pub name: String,
    /// Virtual IP.
    pub vip: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// `tcp` or `udp` (forwarded by L4), or `http` (terminated and proxied by L7; the L7 keys of the listener,
    /// `rule`, `sticky` and `hash`, are read by `xlb_l7::config`).
    pub protocol: ListenerProtocol,
    /// Scheduler.
    #[serde(default = "default_scheduler")]
    pub scheduler: SchedulerKind,
    /// `fullnat` or `dr`.
    #[serde(default = "default_forwarding")]
    pub forwarding: Forwarding,
    /// Server group name.
    pub group: String,
    /// Interface the VIP is announced on (ARP); default: the one whose subnet holds the VIP, else the first.
    #[serde(default)]
    pub interface: Option<String>,
    /// `[[listener.rule]]` of an `http` listener, kept as TOML here and read by `xlb_l7::config`.
    #[serde(default, rename = "rule", skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<toml::Table>,
    /// `sticky` of an `http` listener, kept as TOML here and read by `xlb_l7::config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<toml::Table>,
    /// `hash` of an `http` listener (consistent hashing on a header or cookie), kept as TOML here and read by
    /// `xlb_l7::config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<toml::Table>,
    /// `[listener.tls]` of an `https` listener (certificates, policy), kept as TOML here and read by
    /// `xlb_l7::tls::config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<toml::Table>,
    /// SYN flood defence of this listener (TCP FULLNAT only); default: `[l4] syn_proxy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syn_proxy: Option<SynProxyMode>,
    /// Most connection entries (so FULLNAT local ports) this listener may hold on the node, split between
    /// workers; default: `[l4] listener_max_conns` (0: no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_conns: Option<usize>,
}

/// When xlb answers a FULLNAT TCP listener's SYNs itself with SYN cookies (the SYN proxy), instead of opening
/// a connection entry, taking a local port and picking a server for every SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SynProxyMode {
    /// Never: every SYN opens an entry (as before).
    Off,
    /// When the listener's half-open entries (per worker) exceed `syn_proxy_threshold` (a tenth of it while the
    /// table or a local port pool is above `pressure_percent` full); off again when the flood has stopped
    /// (with hysteresis).
    #[default]
    Auto,
    /// Every SYN is answered with a cookie (costs the client's TCP options beyond MSS: window scaling, SACK
    /// and timestamps are not negotiated; and a round trip to the server before the first data goes on).
    Always,
}

fn default_scheduler() -> SchedulerKind {
    SchedulerKind::Wrr
}

fn default_forwarding() -> Forwarding {
    Forwarding::Fullnat
}

/// A server of a group.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port.
    pub addr: SocketAddrV4,
    /// Weight; 0 drains the server (no new flows, existing ones continue).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// `[[group]]`: backend servers and their health check.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// Name, referenced by listeners.
    pub name: String,
    /// Servers.
    pub servers: Vec<ServerConfig>,
    /// Health check; without one every server is considered healthy.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// `[group.tls]`: HTTPS to the servers for `http`/`https` listeners (CA file, server name), kept as TOML
    /// here and read by `xlb_l7::tls::upstream`. L4 listeners forward bytes untouched and ignore it.
    #[serde(default)]
    pub tls: Option<toml::Table>,
}

/// `[l4]`: connection table and FULLNAT settings (optional).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct L4Config {
    /// Connections per worker (memory is reserved up front: about [`CONN_BYTES_ESTIMATE`] bytes per entry with
    /// the index and the FULLNAT port quarantine; at most [`MAX_CONN_TABLE_SIZE`]).
    pub conn_table_size: usize,
    /// Local ports FULLNAT uses towards backends, inclusive. Ports are split between workers.
    pub local_port_min: u16,
    /// Upper end of the local port range.
    pub local_port_max: u16,
    /// Per-state timeouts.
    pub timeouts: Timeouts,
    /// What happens to established connections of a server removed from its group (live changes).
    pub on_server_removed: RemovedServerPolicy,
    /// SYN flood defence of TCP FULLNAT listeners (a listener's own `syn_proxy` overrides it).
    pub syn_proxy: SynProxyMode,
    /// `auto`: half-open (SYN_RECV) entries of one listener on one worker above which its SYN proxy switches on.
    pub syn_proxy_threshold: u32,
    /// Fill level (percent of the connection table, or of the fullest local port pool) above which the table
    /// is under pressure: new half-open TCP and unanswered UDP entries get the short timeouts
    /// (`timeouts.tcp_syn_recv_pressure`, `timeouts.udp_unanswered_pressure`) and `auto` SYN proxies switch on at
    /// a tenth of `syn_proxy_threshold`.
    pub pressure_percent: u8,
    /// Default cap on one listener's connection entries on the node (0: none); a listener's `max_conns`
    /// overrides it.
    pub listener_max_conns: usize,
}

impl Default for L4Config {
    fn default() -> Self {
        L4Config {
            conn_table_size: 262_144,
            local_port_min: 10_000,
            local_port_max: 60_999,
            timeouts: Timeouts::default(),
            on_server_removed: RemovedServerPolicy::Keep,
            syn_proxy: SynProxyMode::Auto,
            syn_proxy_threshold: 1000,
            pressure_percent: 50,
            listener_max_conns: 0,
        }
    }
}

/// Largest `conn_table_size` (per worker): 2^27 entries, about 28 GiB per worker. The table's entry numbers
/// are 31-bit; anything near that is a typo, not a plan.
pub const MAX_CONN_TABLE_SIZE: usize = 1 << 27;

/// Bytes one connection-table place reserves, rounded up: the table itself measures 110 (the 64-byte entry,
/// the index with two keys at half load in 64-byte buckets of ten, the free list, the timer wheel and eviction
/// links), and the FULLNAT port quarantine sized like the table up to about 110 more (its queue and its hash
/// map of holders).
pub const CONN_BYTES_ESTIMATE: u64 = 224;

/// Memory `conn_table_size` reserves per worker, estimated.
pub fn conn_table_bytes(conn_table_size: usize) -> u64 {
    conn_table_size as u64 * CONN_BYTES_ESTIMATE
}

/// Why `ip` cannot be a VIP, if it cannot: addresses no client can send to, or that no router forwards to one
/// host.
pub fn unusable_vip(ip: Ipv4Addr) -> Option<&'static str> {
    let first = ip.octets()[0];
    if ip.is_broadcast() {
        Some("the limited broadcast address")
    } else if first == 0 {
        Some("in 0.0.0.0/8 (\"this network\", unspecified)")
    } else if ip.is_loopback() {
        Some("a loopback address (127.0.0.0/8)")
    } else if ip.is_multicast() {
        Some("a multicast address (224.0.0.0/4)")
    } else if first >= 240 {
        Some("in the reserved 240.0.0.0/4")
    } else {
        None
    }
}

/// Local ports reserved for health-check probes (outside the FULLNAT range by validation).
pub const PROBE_PORT_BASE: u16 = 61_000;
/// Number of probe ports.
pub const PROBE_PORTS: u16 = 1_000;

/// Longest listener or group name.
pub const MAX_NAME_LEN: usize = 64;

/// The rule for listener and group names, shared by config files and the control API (where a name is also a
/// path segment, `/v1/listeners/{name}`, and a metrics label): 1 to [`MAX_NAME_LEN`] characters of
/// `[A-Za-z0-9_.-]`, and not `.` or `..`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("{} characters, over the limit of {MAX_NAME_LEN}", name.len()));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "{name:?} has {c:?}: names are letters, digits, '_', '.' and '-'"
        ));
    }
    Ok(())
}

/// Checks listeners and groups against each other and the interfaces. Errors name the field.
pub fn validate(
    listeners: &[ListenerConfig],
    groups: &[GroupConfig],
    l4: &L4Config,
    interfaces: &[InterfaceConfig],
) -> Result<(), String> {
    let mut group_names = HashSet::new();
    for (i, g) in groups.iter().enumerate() {
        check_name(&g.name).map_err(|e| format!("group[{i}].name: {e}"))?;
        let at = format!("group[{i}] ({})", g.name);
        if !group_names.insert(g.name.as_str()) {
            return Err(format!("{at}.name: defined twice"));
        }
        if g.servers.len() > usize::from(u16::MAX) {
            return Err(format!("{at}.servers: too many servers"));
        }
        let mut seen = HashSet::new();
        for s in &g.servers {
            if !seen.insert(s.addr) {
                return Err(format!("{at}.servers: {} listed twice", s.addr));
            }
            if s.addr.port() == 0 {
                return Err(format!("{at}.servers: {} has port 0", s.addr));
            }
        }
        if let Some(hc) = &g.health_check {
            hc.validate().map_err(|e| format!("{at}.{e}"))?;
        }
    }
    let own: HashSet<Ipv4Addr> = interfaces
        .iter()
        .flat_map(|i| i.addresses.iter().map(|n| n.addr))
        .collect();
    let mut endpoints = HashSet::new();
    let mut names = HashSet::new();
    for (i, l) in listeners.iter().enumerate() {
        check_name(&l.name).map_err(|e| format!("listener[{i}].name: {e}"))?;
        let at = format!("listener[{i}] ({})", l.name);
        if !names.insert(l.name.as_str()) {
            return Err(format!("{at}.name: defined twice"));
        }
        if !endpoints.insert((l.vip, l.port, l.protocol.transport())) {
            return Err(format!(
                "{at}: {}:{} {:?} is served by another listener",
                l.vip, l.port, l.protocol
            ));
        }
        if !l.protocol.is_l7() && (!l.rules.is_empty() || l.sticky.is_some() || l.hash.is_some()) {
            return Err(format!(
                "{at}: rule, sticky and hash need protocol = \"http\" or \"https\""
            ));
        }
        if (l.protocol == ListenerProtocol::Https) != l.tls.is_some() {
            return Err(format!(
                "{at}: protocol = \"https\" and a [listener.tls] table go together"
            ));
        }
        if l.protocol.is_l7() && l.forwarding != Forwarding::Fullnat {
            return Err(format!(
                "{at}.forwarding: an http listener proxies (fullnat); dr needs a tcp listener"
            ));
        }
        if l.port == 0 {
            return Err(format!("{at}.port: must not be 0"));
        }
        if let Some(why) = unusable_vip(l.vip) {
            return Err(format!("{at}.vip: {} is {why}; a VIP must be a unicast address", l.vip));
        }
        if own.contains(&l.vip) {
            return Err(format!(
                "{at}.vip: {} is an interface address; VIPs must be separate addresses",
                l.vip
            ));
        }
        let Some(group) = groups.iter().find(|g| g.name == l.group) else {
            return Err(format!("{at}.group: no [[group]] named {:?}", l.group));
        };
        if let Some(name) = &l.interface {
            if !interfaces.iter().any(|i| &i.name == name) {
                return Err(format!("{at}.interface: no [[interface]] named {name:?}"));
            }
        }
        for s in &group.servers {
            let connected = interfaces
                .iter()
                .any(|i| i.addresses.iter().any(|n| n.prefix < 32 && n.contains(*s.addr.ip())));
            let routed = interfaces.iter().any(|i| i.gateway.is_some());
            if !connected && !routed {
                return Err(format!(
                    "{at}: server {} of group {:?} is on no interface's subnet and no gateway is set",
                    s.addr, group.name
                ));
            }
            if l.forwarding == Forwarding::Dr && !connected {
                return Err(format!(
                    "{at}.forwarding: dr needs server {} on a directly connected subnet",
                    s.addr
                ));
            }
            if l.forwarding == Forwarding::Dr && s.addr.port() != l.port {
                return Err(format!(
                    "{at}.forwarding: dr cannot change the port ({} vs listener port {})",
                    s.addr, l.port
                ));
            }
        }
    }
    if l4.conn_table_size == 0 {
        return Err("l4.conn_table_size: must be at least 1".into());
    }
    if l4.conn_table_size > MAX_CONN_TABLE_SIZE {
        return Err(format!(
            "l4.conn_table_size: {} is above the maximum {MAX_CONN_TABLE_SIZE} per worker (each place reserves about \
             {CONN_BYTES_ESTIMATE} bytes: this would be {} GiB per worker)",
            l4.conn_table_size,
            conn_table_bytes(l4.conn_table_size) >> 30
        ));
    }
    if l4.local_port_min < 1024 || l4.local_port_min > l4.local_port_max {
        return Err("l4.local_port_min: must be >= 1024 and <= local_port_max".into());
    }
    if l4.local_port_max >= PROBE_PORT_BASE {
        return Err(format!(
            "l4.local_port_max: must be below {PROBE_PORT_BASE} (ports above are for health checks)"
        ));
    }
    if l4.pressure_percent == 0 || l4.pressure_percent > 100 {
        return Err("l4.pressure_percent: must be 1-100".into());
    }
    if l4.syn_proxy_threshold == 0 {
        return Err("l4.syn_proxy_threshold: must be at least 1".into());
    }
    for (i, l) in listeners.iter().enumerate() {
        let proxied = l.syn_proxy.is_some_and(|m| m != SynProxyMode::Off);
        if proxied && (l.protocol != ListenerProtocol::Tcp || l.forwarding != Forwarding::Fullnat) {
            return Err(format!(
                "listener[{i}] ({}).syn_proxy: only TCP FULLNAT listeners have a SYN proxy (the replies of DR \
                 bypass xlb, and UDP has no handshake)",
                l.name
            ));
        }
        if l.max_conns == Some(0) {
            return Err(format!(
                "listener[{i}] ({}).max_conns: must be at least 1 (leave it out for no cap)",
                l.name
            ));
        }
    }
    l4.timeouts.validate()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        #[serde(default)]
        listener: Vec<ListenerConfig>,
        #[serde(default)]
        group: Vec<GroupConfig>,
        #[serde(default)]
        l4: L4Config,
        interface: Vec<InterfaceConfig>,
    }

    const BASE: &str = r#"
        [[interface]]
        name = "ext0"
        queues = [0]
        cores = [0]
        addresses = ["198.18.0.10/24"]
        [[interface]]
        name = "int0"
        queues = [0]
        cores = [0]
        addresses = ["198.19.0.10/24"]

        [[listener]]
        name = "web"
        vip = "198.18.0.100"
        port = 80
        protocol = "tcp"
        scheduler = "wrr"
        forwarding = "fullnat"
        group = "web"

        [[group]]
        name = "web"
        servers = [{ addr = "198.19.0.2:8080", weight = 1 }, { addr = "198.19.0.3:8080", weight = 3 }]
        health_check = { kind = "tcp", interval_ms = 500, timeout_ms = 300, rise = 2, fall = 2 }
    "#;

    fn check(text: &str) -> Result<(), String> {
        let d: Doc = toml::from_str(text).map_err(|e| e.to_string())?;
        validate(&d.listener, &d.group, &d.l4, &d.interface)
    }

    #[test]
    fn flood_defence_keys_parse_with_their_defaults() {
        let d: Doc = toml::from_str(BASE).unwrap();
        assert_eq!(
            (d.l4.syn_proxy, d.l4.syn_proxy_threshold, d.l4.pressure_percent),
            (SynProxyMode::Auto, 1000, 50)
        );
        assert_eq!((d.listener[0].syn_proxy, d.listener[0].max_conns), (None, None));
        let text = BASE.replace(
            "forwarding = \"fullnat\"",
            "forwarding = \"fullnat\"\n        syn_proxy = \"always\"\n        max_conns = 500",
        ) + "\n[l4]\nsyn_proxy = \"off\"\nlistener_max_conns = 100\n";
        check(&text).unwrap();
        let d: Doc = toml::from_str(&text).unwrap();
        assert_eq!(
            (d.listener[0].syn_proxy, d.listener[0].max_conns),
            (Some(SynProxyMode::Always), Some(500))
        );
        assert_eq!((d.l4.syn_proxy, d.l4.listener_max_conns), (SynProxyMode::Off, 100));
    }

    #[test]
    fn documented_example_is_valid() {
        check(BASE).unwrap();
        let d: Doc = toml::from_str(BASE).unwrap();
        assert_eq!(d.listener[0].scheduler, SchedulerKind::Wrr);
        assert_eq!(d.group[0].servers[1].weight, 3);
    }

    #[test]
    fn names_are_checked_by_one_rule() {
        for good in ["web", "a", "web-1.v2_x", "..a", &"n".repeat(MAX_NAME_LEN)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a%00b",
            "a\0b",
            "a b",
            "a/b",
            "caf\u{e9}",
            &"n".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                BASE.replace("group = \"web\"", "group = \"api\""),
                "listener[0] (web).group",
            ),
            (
                BASE.replace("vip = \"198.18.0.100\"", "vip = \"198.18.0.10\""),
                "listener[0] (web).vip",
            ),
            (
                BASE.replace("198.19.0.3:8080", "198.20.0.3:8080"),
                "is on no interface's subnet",
            ),
            (
                BASE.replace("forwarding = \"fullnat\"", "forwarding = \"dr\""),
                "listener[0] (web).forwarding",
            ),
            (
                BASE.replace("scheduler = \"wrr\"", "scheduler = \"fastest\""),
                "fastest",
            ),
            (BASE.replace("protocol = \"tcp\"", "protocol = \"sctp\""), "sctp"),
            (format!("{BASE}\n[l4]\nlocal_port_max = 62000\n"), "l4.local_port_max"),
            (BASE.replace("198.19.0.3:8080", "198.19.0.2:8080"), "listed twice"),
            (
                BASE.replace("name = \"web\"\n        vip", "name = \"..\"\n        vip"),
                "listener[0].name",
            ),
            (
                BASE.replace("name = \"web\"\n        vip", "name = \"a/b\"\n        vip"),
                "listener[0].name",
            ),
            (
                BASE.replace("name = \"web\"\n        servers", "name = \"\"\n        servers"),
                "group[0].name",
            ),
            (
                format!("{BASE}\n[l4]\nconn_table_size = 10000000000\n"),
                "l4.conn_table_size: 10000000000 is above the maximum",
            ),
            (
                format!("{BASE}\n[l4]\nconn_table_size = 0\n"),
                "l4.conn_table_size: must be at least 1",
            ),
            (
                BASE.replace(
                    "forwarding = \"fullnat\"",
                    "forwarding = \"dr\"\n        syn_proxy = \"auto\"",
                )
                .replace("198.19.0.2:8080", "198.19.0.2:80")
                .replace("198.19.0.3:8080", "198.19.0.3:80"),
                "listener[0] (web).syn_proxy: only TCP FULLNAT listeners",
            ),
            (
                BASE.replace(
                    "forwarding = \"fullnat\"",
                    "forwarding = \"fullnat\"\n        max_conns = 0",
                ),
                "listener[0] (web).max_conns: must be at least 1",
            ),
            (format!("{BASE}\n[l4]\npressure_percent = 0\n"), "l4.pressure_percent"),
            (format!("{BASE}\n[l4]\npressure_percent = 101\n"), "l4.pressure_percent"),
            (
                format!("{BASE}\n[l4]\nsyn_proxy_threshold = 0\n"),
                "l4.syn_proxy_threshold",
            ),
            (format!("{BASE}\n[l4]\nsyn_proxy = \"sometimes\"\n"), "sometimes"),
            (
                format!("{BASE}\n[l4]\ntimeouts = {{ tcp_syn_recv_pressure = 0 }}\n"),
                "l4.timeouts.tcp_syn_recv_pressure",
            ),
        ];
        for (text, expected) in cases {
            let e = check(&text).unwrap_err();
            assert!(e.contains(expected), "expected {expected:?} in: {e}");
        }
    }

    #[test]
    fn unusable_vips_are_refused_naming_the_field() {
        for (vip, why) in [
            ("0.0.0.0", "0.0.0.0/8"),
            ("0.1.2.3", "0.0.0.0/8"),
            ("255.255.255.255", "limited broadcast"),
            ("127.0.0.1", "loopback"),
            ("127.9.9.9", "loopback"),
            ("224.0.0.18", "multicast"),
            ("239.255.0.1", "multicast"),
            ("240.0.0.1", "240.0.0.0/4"),
            ("250.1.1.1", "240.0.0.0/4"),
        ] {
            let e = check(&BASE.replace("198.18.0.100", vip)).unwrap_err();
            assert!(
                e.starts_with(&format!("listener[0] (web).vip: {vip} is ")),
                "{vip}: {e}"
            );
            assert!(e.contains(why), "{vip}: {e}");
        }
        for vip in ["198.18.0.100", "10.0.0.1", "223.255.255.254", "1.1.1.1"] {
            check(&BASE.replace("198.18.0.100", vip)).unwrap();
        }
    }

    #[test]
    fn the_largest_table_is_accepted_and_one_more_is_not() {
        check(&format!("{BASE}\n[l4]\nconn_table_size = {MAX_CONN_TABLE_SIZE}\n")).unwrap();
        let e = check(&format!(
            "{BASE}\n[l4]\nconn_table_size = {}\n",
            MAX_CONN_TABLE_SIZE + 1
        ))
        .unwrap_err();
        assert!(e.starts_with("l4.conn_table_size: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
        assert_eq!(conn_table_bytes(1 << 20), 224 << 20);
    }
}
