//! Lab topologies shared by integration tests and the demo.

use anyhow::Result;

use crate::lab::{workspace_bin, Lab, Netns, Proc};
use crate::traffic::TIMEOUT;

/// The `[node]` and `[[interface]]` sections of an xlb config for the [`TwoArm`] lab: node `lb1` (its
/// `CONTROL_SOCKET` filled in by `Appliance::start`), ext0 at 198.18.0.10/24 and int0 at 198.19.0.10/24, one
/// queue each, worker on core 0. Tests append their `[datapath]`, listeners and groups.
pub const TWO_ARM_BASE: &str = r#"[node]
name = "lb1"
control_socket = "CONTROL_SOCKET"

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
"#;

/// The two-arm L4 lab: `client` (cli0 198.18.0.1/24) ── ext0 [`lb`, kernel 198.18.0.2/24] int0 ── srv0
/// `servers` (one address per backend, /24). The appliance's own addresses are left to its config.
pub struct TwoArm {
    /// The lab (owns everything; dropping it removes it).
    pub lab: Lab,
    /// The client namespace.
    pub client: Netns,
    /// The load balancer's namespace.
    pub lb: Netns,
    /// The backends' namespace.
    pub servers: Netns,
    server_ips: Vec<String>,
}

impl TwoArm {
    /// Builds the lab with backends at `server_ips` and `queues` queues on each veth.
    pub fn new(name: &str, server_ips: &[&str], queues: u32) -> Result<TwoArm> {
        let lab = Lab::new(name)?;
        let client = lab.netns("client")?;
        let lb = lab.netns("lb")?;
        let servers = lab.netns("servers")?;
        lab.veth_queues((&client, "cli0"), (&lb, "ext0"), queues)?;
        lab.veth_queues((&lb, "int0"), (&servers, "srv0"), queues)?;
        client.addr("cli0", "198.18.0.1/24")?;
        lb.addr("ext0", "198.18.0.2/24")?;
        for ip in server_ips {
            servers.addr("srv0", &format!("{ip}/24"))?;
        }
        // AF_XDP frames carry no checksum-offload state: the peers must send complete checksums.
        client.disable_offloads("cli0")?;
        servers.disable_offloads("srv0")?;
        let server_ips = server_ips.iter().map(|s| s.to_string()).collect();
        Ok(TwoArm {
            lab,
            client,
            lb,
            servers,
            server_ips,
        })
    }

    /// Starts one `xlb-bench sink` per backend address (named `s1`, `s2`, … in order) on `port`, speaking
    /// `proto` (tcp, udp or http); waits until TCP sinks listen.
    pub fn sinks(&self, proto: &str, port: u16) -> Result<Vec<Proc>> {
        let bench = workspace_bin("xlb-bench")?.display().to_string();
        let procs = self
            .server_ips
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                let (listen, name) = (format!("{ip}:{port}"), format!("s{}", i + 1));
                let args = [
                    "sink",
                    "--listen",
                    listen.as_str(),
                    "--proto",
                    proto,
                    "--name",
                    name.as_str(),
                ];
                self.lab.spawn(&self.servers, &bench, &args)
            })
            .collect::<Result<Vec<_>>>()?;
        if proto != "udp" {
            self.servers.wait_tcp_listen(port, TIMEOUT)?;
        }
        Ok(procs)
    }
}
