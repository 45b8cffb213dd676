//! The two systems compared: xlb and the Linux kernel's own NAT, set up and torn down in the `lb` namespace.
//!
//! Both do FULLNAT with round robin over the same three backends: the client talks to the VIP, the
//! servers see the load balancer's inner address as the source.
//!
//! - **xlb**: `xlb run` with TCP listeners on VIP:80 (TCP sinks) and VIP:8000 (HTTP sinks) and a UDP listener
//!   on VIP:53, its datapath worker pinned
//!   to core [`XLB_CORE`] and busy-polling. Stopping it (SIGTERM) detaches its XDP filters.
//! - **kernel**: `ip_forward`, the VIP as a local address on `ext0` (so the kernel answers ARP for it), the
//!   inner address on `int0`, and the nftables ruleset [`NFT_RULESET`]: DNAT to `numgen inc mod 3` (round
//!   robin per new conntrack flow) and SNAT to the inner address.

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use serde_json::Value;
use xlb_tests::appliance::Appliance;

use super::lab::{
    SuiteLab, HTTP_PORT, INT_PREFIX, LB_EXT_CIDR, LB_INT_IP, SERVERS, TCP_PORT, UDP_PORT, VIP, VIP_HTTP_PORT,
    VIP_TCP_PORT, VIP_UDP_PORT, XLB_CORE,
};

/// Name of the nftables table the kernel peer uses.
pub const NFT_TABLE: &str = "xlbbench";

/// The kernel peer's nftables ruleset (`nft -f`), checked with nftables 1.0.6.
pub const NFT_RULESET: &str = r#"table ip xlbbench {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 198.18.0.100 tcp dport 80 dnat to numgen inc mod 3 map { 0 : 198.19.0.2, 1 : 198.19.0.3, 2 : 198.19.0.4 } : 8080
		ip daddr 198.18.0.100 udp dport 53 dnat to numgen inc mod 3 map { 0 : 198.19.0.2, 1 : 198.19.0.3, 2 : 198.19.0.4 } : 5353
		ip daddr 198.18.0.100 tcp dport 8000 dnat to numgen inc mod 3 map { 0 : 198.19.0.2, 1 : 198.19.0.3, 2 : 198.19.0.4 } : 8000
	}
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "int0" snat to 198.19.0.10
	}
}
"#;

/// Which system a run measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SystemKind {
    /// xlb on AF_XDP.
    Xlb,
    /// Linux netfilter NAT (nftables).
    Kernel,
}

impl SystemKind {
    /// Both, in the order runs alternate.
    pub const ALL: [SystemKind; 2] = [SystemKind::Xlb, SystemKind::Kernel];

    /// `xlb` or `kernel`.
    pub fn name(self) -> &'static str {
        match self {
            SystemKind::Xlb => "xlb",
            SystemKind::Kernel => "kernel",
        }
    }
}

/// The xlb config the suite runs (`CONTROL_SOCKET` is filled in by [`Appliance::start`]).
pub fn xlb_config() -> String {
    let servers = |port: u16| {
        SERVERS
            .iter()
            .map(|ip| format!("{{ addr = \"{ip}:{port}\", weight = 1 }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let listener = |name: &str, port: u16, proto: &str| {
        format!(
            "[[listener]]\nname = \"{name}\"\nvip = \"{VIP}\"\nport = {port}\nprotocol = \"{proto}\"\n\
             scheduler = \"rr\"\nforwarding = \"fullnat\"\ngroup = \"{name}\"\n"
        )
    };
    let interface = |name: &str, cidr: &str| {
        format!(
            "[[interface]]\nname = \"{name}\"\nqueues = [0]\ncores = [{XLB_CORE}]\nidle = \"busy\"\n\
             addresses = [\"{cidr}\"]\n"
        )
    };
    format!(
        "[node]\nname = \"xlb-suite\"\ncontrol_socket = \"CONTROL_SOCKET\"\n\n{}\n{}\n{}\n{}\n{}\n\
         [[group]]\nname = \"web\"\nservers = [{}]\n\n[[group]]\nname = \"dns\"\nservers = [{}]\n\n\
         [[group]]\nname = \"http\"\nservers = [{}]\n",
        interface("ext0", LB_EXT_CIDR),
        interface("int0", &format!("{LB_INT_IP}/{INT_PREFIX}")),
        listener("web", VIP_TCP_PORT, "tcp"),
        listener("dns", VIP_UDP_PORT, "udp"),
        listener("http", VIP_HTTP_PORT, "tcp"),
        servers(TCP_PORT),
        servers(UDP_PORT),
        servers(HTTP_PORT),
    )
}

/// A system set up in the lab's `lb` namespace.
pub enum RunningSystem {
    /// A running `xlb run`.
    Xlb(Appliance),
    /// The kernel NAT configuration is in place.
    Kernel,
}

/// What a system reported when it was stopped.
#[derive(Debug, Clone, Serialize)]
pub struct StopReport {
    /// xlb's stats document (`xlbctl stats --json`) just before it was stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xlb_stats: Option<Value>,
    /// `nft list table` output (with rule counters absent, just the applied rules) for the kernel peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nft_applied: Option<String>,
}

impl RunningSystem {
    /// Sets up `kind` in the lab's `lb` namespace.
    pub fn start(kind: SystemKind, lab: &SuiteLab) -> Result<RunningSystem> {
        match kind {
            SystemKind::Xlb => {
                ensure!(
                    !xdp_attached(lab, "ext0")? && !xdp_attached(lab, "int0")?,
                    "an XDP program is still attached in the lb namespace"
                );
                Ok(RunningSystem::Xlb(Appliance::start(
                    &lab.lab,
                    &lab.lb,
                    "xlb-suite",
                    &xlb_config(),
                )?))
            }
            SystemKind::Kernel => {
                let lb = &lab.lb;
                ensure!(
                    !xdp_attached(lab, "ext0")? && !xdp_attached(lab, "int0")?,
                    "xlb's XDP filter is still attached: the kernel peer would not see the traffic"
                );
                lb.sysctl("net.ipv4.ip_forward", "1")?;
                lb.addr("ext0", &format!("{VIP}/32"))?;
                lb.addr("int0", &format!("{LB_INT_IP}/{INT_PREFIX}"))?;
                lb.run_input("nft", &["-f", "-"], NFT_RULESET.as_bytes())
                    .context("cannot load the kernel peer's nftables ruleset")?;
                Ok(RunningSystem::Kernel)
            }
        }
    }

    /// Which system this is.
    pub fn kind(&self) -> SystemKind {
        match self {
            RunningSystem::Xlb(_) => SystemKind::Xlb,
            RunningSystem::Kernel => SystemKind::Kernel,
        }
    }

    /// The load balancer's own process, if it has one.
    pub fn pid(&self) -> Option<u32> {
        match self {
            RunningSystem::Xlb(xlb) => Some(xlb.proc().pid()),
            RunningSystem::Kernel => None,
        }
    }

    /// Errors if the system has stopped working on its own (xlb exited).
    pub fn check(&self) -> Result<()> {
        match self {
            RunningSystem::Xlb(xlb) => xlb.proc().check_running(),
            RunningSystem::Kernel => Ok(()),
        }
    }

    /// Tears the system down, leaving `lb` as [`super::lab::SuiteLab::build`] made it: xlb is stopped with
    /// SIGTERM and must exit 0 with its XDP filters detached; the kernel's table, addresses and forwarding
    /// are removed.
    pub fn stop(self, lab: &SuiteLab) -> Result<StopReport> {
        match self {
            RunningSystem::Xlb(xlb) => {
                let stats = xlb.stats().ok();
                let status = xlb.terminate()?;
                ensure!(
                    status.success(),
                    "xlb exited with {status}; stderr:\n{}",
                    xlb.proc().stderr()
                );
                for ifname in ["ext0", "int0"] {
                    if xdp_attached(lab, ifname)? {
                        bail!("xlb exited but an XDP program is still attached to {ifname}");
                    }
                }
                Ok(StopReport {
                    xlb_stats: stats,
                    nft_applied: None,
                })
            }
            RunningSystem::Kernel => {
                let lb = &lab.lb;
                let applied = lb.run("nft", &["list", "table", "ip", NFT_TABLE]).ok();
                lb.run("nft", &["delete", "table", "ip", NFT_TABLE])?;
                lb.ip(&["addr", "del", &format!("{VIP}/32"), "dev", "ext0"])?;
                lb.ip(&["addr", "del", &format!("{LB_INT_IP}/{INT_PREFIX}"), "dev", "int0"])?;
                lb.sysctl("net.ipv4.ip_forward", "0")?;
                // Conntrack entries would survive the table; flush them if the tool is there.
                if super::lab::which("conntrack") {
                    let _ = lb.output("conntrack", &["-F"]);
                }
                Ok(StopReport {
                    xlb_stats: None,
                    nft_applied: applied,
                })
            }
        }
    }
}

/// Whether an XDP program is attached to `ifname` in `lb`.
fn xdp_attached(lab: &SuiteLab, ifname: &str) -> Result<bool> {
    let out = lab.lb.ip(&["-j", "link", "show", "dev", ifname])?;
    let links: Value = serde_json::from_str(&out).with_context(|| format!("bad `ip -j link` output: {out}"))?;
    Ok(links.get(0).and_then(|l| l.get("xdp")).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xlb_config_names_both_listeners_and_all_servers() {
        let c = xlb_config();
        for needle in [
            "vip = \"198.18.0.100\"",
            "port = 80",
            "port = 53",
            "protocol = \"udp\"",
            "198.19.0.4:8080",
            "198.19.0.2:5353",
            "port = 8000",
            "198.19.0.3:8000",
            "idle = \"busy\"",
            "cores = [1]",
            "forwarding = \"fullnat\"",
        ] {
            assert!(c.contains(needle), "{needle} missing from\n{c}");
        }
    }

    #[test]
    fn ruleset_matches_lab_constants() {
        for needle in [VIP, LB_INT_IP, "8080", "5353", "dport 8000", NFT_TABLE] {
            assert!(NFT_RULESET.contains(needle), "{needle}");
        }
        for s in SERVERS {
            assert!(NFT_RULESET.contains(s), "{s}");
        }
    }
}
