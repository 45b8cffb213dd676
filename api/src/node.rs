//! The part of the node's config file that `xlbctl` reads: where the control socket is. The rest of the file
//! (interfaces, listeners, HA) is the daemon's to parse and validate; here it is skipped.

use std::path::PathBuf;

use serde::Deserialize;

/// The control socket when neither `--socket` nor a config file names one.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/xlb/xlb.sock";

/// A config file as far as the CLI cares: its `[node]` table.
#[derive(Debug, Deserialize)]
pub struct NodeFile {
    pub node: NodeSection,
}

/// `[node]` fields the CLI uses; the others are ignored.
#[derive(Debug, Deserialize)]
pub struct NodeSection {
    pub control_socket: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_socket_is_read_from_a_whole_config_file() {
        let text = r#"
            [node]
            name = "lb1"
            control_socket = "/run/xlb/lb1.sock"
            metrics_address = "198.18.0.2:9100"

            [[interface]]
            name = "ext0"
            queues = [0]
            addresses = ["198.18.0.10/24"]

            [[listener]]
            name = "web"
            vip = "198.18.0.100"
            port = 80
            group = "web"

            [ha]
            interface = "ext0"
        "#;
        let file: NodeFile = toml::from_str(text).unwrap();
        assert_eq!(file.node.control_socket, PathBuf::from("/run/xlb/lb1.sock"));
        let missing = toml::from_str::<NodeFile>("[node]\nname = \"lb1\"\n").unwrap_err();
        assert!(missing.to_string().contains("control_socket"), "{missing}");
    }
}
