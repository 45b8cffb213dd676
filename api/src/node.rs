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
