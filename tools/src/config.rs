//! The appliance config file (TOML). Sections are defined where they are used: `[node]`, `[[interface]]` and
//! `[datapath]` in `xlb_stack::config`, `[[listener]]`, `[[group]]` and `[l4]` in `xlb_l4::config`, `[l7]` and the
//! L7 keys of `http` listeners in `xlb_l7::config`.

use std::path::Path;

use serde::Deserialize;
use xlb_l4::config::{GroupConfig, L4Config, ListenerConfig};
use xlb_l7::config::L7Config;
use xlb_stack::config::{validate_interfaces, DatapathConfig, InterfaceConfig, NodeConfig};

use crate::ha_config::HaConfig;

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[node]`.
    pub node: NodeConfig,
    /// `[[interface]]` sections.
    #[serde(rename = "interface")]
    pub interfaces: Vec<InterfaceConfig>,
    /// `[datapath]` (optional).
    #[serde(default)]
    pub datapath: DatapathConfig,
    /// `[[listener]]` sections.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// `[[group]]` sections.
    #[serde(default, rename = "group")]
    pub groups: Vec<GroupConfig>,
    /// `[l4]` (optional).
    #[serde(default)]
    pub l4: L4Config,
    /// `[l7]` (optional): limits, timeouts and pools of the `http` listeners.
    #[serde(default)]
    pub l7: L7Config,
    /// `[ha]` (optional): this node is part of an HA pair.
    #[serde(default)]
    pub ha: Option<HaConfig>,
}

impl Config {
    /// Parses and validates config text. Errors name the bad field.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the whole config (also after a change through the control API). Errors name the field.
    pub fn validate(&self) -> Result<(), String> {
        validate_interfaces(&self.interfaces, &self.datapath)?;
        xlb_l4::config::validate(&self.listeners, &self.groups, &self.l4, &self.interfaces)?;
        crate::l7::validate(self)?;
        if let Some(ha) = &self.ha {
            ha.validate(&self.interfaces, &self.l4.timeouts)?;
            // Sync datagrams to the node's own address are told apart by port: keep it off the local ports
            // (FULLNAT flows and L7 upstream connections take theirs from the same range) and the probe ports.
            let port = ha.sync_group.port();
            let probes = xlb_l4::config::PROBE_PORT_BASE..xlb_l4::config::PROBE_PORT_BASE + xlb_l4::config::PROBE_PORTS;
            if (self.l4.local_port_min..=self.l4.local_port_max).contains(&port) || probes.contains(&port) {
                return Err(format!(
                    "ha.sync_group: port {port} is inside the local ports (l4.local_port_min..max, FULLNAT and L7 \
                     upstream connections) or the \
                     health-probe ports {}..{}",
                    probes.start,
                    probes.end - 1
                ));
            }
        }
        if self.node.name.is_empty() {
            return Err("node.name: must not be empty".into());
        }
        if self.node.api_address.is_some() {
            api_token(&self.node)?;
        }
        Ok(())
    }

    /// Whether a change from `self` to `new` needs a restart (interfaces, datapath or node settings changed,
    /// or L4 table settings): those are not applied live.
    pub fn restart_needed(&self, new: &Config) -> Option<&'static str> {
        if format!("{:?}", self.interfaces) != format!("{:?}", new.interfaces) {
            return Some("interface");
        }
        if format!("{:?}", self.datapath) != format!("{:?}", new.datapath) {
            return Some("datapath");
        }
        if format!("{:?}", self.node) != format!("{:?}", new.node) {
            return Some("node");
        }
        if self.ha != new.ha {
            return Some("ha");
        }
        if crate::l7::restart_needed(self, new) {
            return Some("l7 (http listeners, [l7], group names or order)");
        }
        let (a, b) = (&self.l4, &new.l4);
        if a.conn_table_size != b.conn_table_size
            || a.local_port_min != b.local_port_min
            || a.local_port_max != b.local_port_max
            || a.timeouts != b.timeouts
        {
            return Some("l4 (conn_table_size, local ports, timeouts)");
        }
        None
    }

    /// Reads, parses and validates a config file. Errors start with the file name.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// A TOML error on one line: `line L, column C (table.key): message`.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let Some(span) = e.span() else {
        return message;
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    match key_at(text, line) {
        Some(key) => format!("line {line}, column {column} ({key}): {message}"),
        None => format!("line {line}, column {column}: {message}"),
    }
}

/// The `table.key` assigned on line `line` (1-based), if that line is a `key = value`, with the table header
/// above it.
fn key_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let here = lines.get(line.checked_sub(1)?)?.trim();
    let (key, _) = here.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
        return None;
    }
    let table = lines[..line - 1]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_start_matches('[').trim_end_matches(']').trim().to_string());
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    })
}

/// The control API token of `node` (`api_token_file`), checked: required with `api_address`, at least 16
/// characters.
pub fn api_token(node: &xlb_stack::config::NodeConfig) -> Result<String, String> {
    let path = node
        .api_token_file
        .as_ref()
        .ok_or("node.api_token_file: required with node.api_address (the TCP API needs a token)")?;
    let token = std::fs::read_to_string(path)
        .map_err(|e| format!("node.api_token_file: reading {}: {e}", path.display()))?
        .trim()
        .to_string();
    if token.len() < 16 || token.chars().any(char::is_whitespace) {
        return Err(format!(
            "node.api_token_file: {} must hold one token of at least 16 characters",
            path.display()
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        [node]
        name = "lb1"
        control_socket = "/run/xlb/lb1.sock"

        [[interface]]
        name = "ext0"
        queues = [0]
        cores = [0]
        xdp_mode = "auto"
        zero_copy = "auto"
        idle = "adaptive"
        addresses = ["198.18.0.10/24"]
    "#;

    #[test]
    fn parses_the_documented_example() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.node.name, "lb1");
        assert_eq!(c.interfaces.len(), 1);
        assert_eq!(c.interfaces[0].addresses[0].to_string(), "198.18.0.10/24");
        assert_eq!(c.datapath.batch_size, 64);
    }

    #[test]
    fn names_unknown_and_missing_fields() {
        let e = Config::parse(&EXAMPLE.replace("control_socket", "control_sock")).unwrap_err();
        assert!(e.contains("control_sock"), "{e}");
        let e = Config::parse(&EXAMPLE.replace("[node]", "[nodes]")).unwrap_err();
        assert!(e.contains("nodes"), "{e}");
        let e = Config::parse(&format!("{EXAMPLE}\n[datapath]\nbatch_size = 0\n")).unwrap_err();
        assert!(e.starts_with("datapath.batch_size"), "{e}");
        let e = Config::parse(&EXAMPLE.replace("queues = [0]", "queues = [\"zero\"]")).unwrap_err();
        assert!(e.contains("queues"), "{e}");
    }

    #[test]
    fn toml_errors_are_one_line_with_the_position_and_the_key() {
        let e = Config::parse(&format!("{EXAMPLE}\n[l4]\nconn_table_size = 1e10\n")).unwrap_err();
        assert!(!e.contains('\n'), "{e}");
        let line = EXAMPLE.lines().count() + 2;
        assert!(
            e.starts_with(&format!(
                "line {line}, column 19 (l4.conn_table_size): invalid type: floating point"
            )),
            "{e}"
        );
        let e = Config::parse(&EXAMPLE.replace("queues = [0]", "queues = [\"zero\"]")).unwrap_err();
        assert!(e.contains("(interface.queues): invalid type"), "{e}");
        let e = Config::parse("[node]\nname = \"x\"\nfoo = \n").unwrap_err();
        assert!(e.starts_with("line 3, column 7 (node.foo): "), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn the_tcp_api_needs_a_real_token() {
        let with =
            |extra: &str| EXAMPLE.replace("[node]", &format!("[node]\napi_address = \"198.18.0.2:9180\"\n{extra}"));
        let e = Config::parse(&with("")).unwrap_err();
        assert!(e.starts_with("node.api_token_file: required"), "{e}");
        let dir = std::env::temp_dir().join(format!("xlb-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (short, good) = (dir.join("short"), dir.join("good"));
        std::fs::write(&short, "tiny\n").unwrap();
        std::fs::write(&good, "0123456789abcdef\n").unwrap();
        let e = Config::parse(&with(&format!("api_token_file = {:?}", short.display().to_string()))).unwrap_err();
        assert!(e.contains("at least 16 characters"), "{e}");
        let c = Config::parse(&with(&format!("api_token_file = {:?}", good.display().to_string()))).unwrap();
        assert_eq!(api_token(&c.node).unwrap(), "0123456789abcdef");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_sync_refresh_is_checked_against_the_l4_timeouts() {
        let dir = std::env::temp_dir().join(format!("xlb-config-refresh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("sync.key");
        std::fs::write(&key, [7u8; 32]).unwrap();
        let with = |ha: &str, established: u32| {
            format!(
                "{EXAMPLE}\n[l4.timeouts]\ntcp_established = {established}\n\n[ha]\nvrid = 51\npriority = 100\n\
                 interface = \"ext0\"\nauth_key_file = {:?}\n{ha}\n",
                key.display().to_string()
            )
        };
        // The default refresh (30 s) against a 20 s established timeout.
        let e = Config::parse(&with("", 20)).unwrap_err();
        assert!(
            e.starts_with("ha.sync_refresh_s: 30 s is not below l4.timeouts.tcp_established (20 s)"),
            "{e}"
        );
        let c = Config::parse(&with("sync_refresh_s = 10", 20)).unwrap();
        assert_eq!(c.ha.unwrap().sync_policy().refresh, std::time::Duration::from_secs(10));
        let e = Config::parse(&with("sync_refresh_s = 0", 900)).unwrap_err();
        assert!(e.starts_with("ha.sync_refresh_s: must be at least 1 second"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
