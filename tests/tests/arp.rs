//! ARP robustness (issue 13, failure 2): forged and flooded ARP, sent with scapy from the lab's namespaces, must
//! neither move a backend's neighbour entry to another link nor fill the neighbour table.
//!
//! Two-arm lab: `client` (cli0 198.18.0.1/24) ── ext0 [xlb: 198.18.0.10, VIP 198.18.0.100] int0 [xlb: 198.19.0.10]
//! ── srv0 `servers` (198.19.0.2, .3, .4, and .5 for a server added later).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use xlb_tests::appliance::Appliance;
use xlb_tests::lab::{wait_until_ok, Netns};
use xlb_tests::topology::{TwoArm, TWO_ARM_BASE};
use xlb_tests::traffic::{count, echo_stream, hellos, in_ns, StreamPace};

const VIP: &str = "198.18.0.100";
const SERVERS: [&str; 3] = ["198.19.0.2", "198.19.0.3", "198.19.0.4"];
const LATE_SERVER: &str = "198.19.0.5";
const FORGED_MAC: &str = "02:66:66:66:66:01";
const HEALTH: &str = "health_check = { kind = \"tcp\", interval_ms = 200, timeout_ms = 100, rise = 2, fall = 2 }";

fn config(servers: &[&str]) -> String {
    let servers = servers
        .iter()
        .map(|ip| format!("{{ addr = \"{ip}:8080\", weight = 1 }}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
{TWO_ARM_BASE}
[datapath]
umem_frames = 8192
ring_size = 1024

[[listener]]
name = "web"
vip = "{VIP}"
port = 80
protocol = "tcp"
scheduler = "rr"
forwarding = "fullnat"
group = "web"

[[group]]
name = "web"
servers = [{servers}]
{HEALTH}
"#
    )
}

/// Runs a scapy script in `ns` (bounded by the lab's command timeout) with the system's Python, where
/// `python3-scapy` is installed (a `python3` earlier in PATH, e.g. pyenv's, may lack it).
fn scapy(ns: &Netns, script: &str) -> Result<String> {
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let full = format!(
        "import logging, time\nlogging.getLogger('scapy.runtime').setLevel(logging.ERROR)\nfrom scapy.all import *\n{script}"
    );
    ns.run(python, &["-c", &full]).context("scapy script")
}

/// Every server of the listener marked healthy, as the stats show it.
fn all_healthy(xlb: &Appliance, n: usize) -> Result<()> {
    let stats = xlb.stats()?;
    let servers = &stats["l4"]["listeners"][0]["servers"];
    for i in 0..n {
        ensure!(servers[i]["healthy"] == true, "server {i} is not healthy: {servers}");
    }
    Ok(())
}

#[test]
fn forged_arp_for_backends_on_the_client_link_changes_nothing() -> Result<()> {
    let t = TwoArm::new("arp_forge", &SERVERS, 1)?;
    let _sinks = t.sinks("tcp", 8080)?;
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &config(&SERVERS))?;
    let target: SocketAddr = format!("{VIP}:80").parse()?;
    // Traffic flows, and every backend has been resolved and checked.
    let first = count(&hellos(&t.client, target, 9)?);
    ensure!(first.len() == 3, "before the forgery: {first:?}");
    wait_until_ok(Duration::from_secs(10), "every server healthy", || all_healthy(&xlb, 3))?;

    // Streams through every backend run while the client link claims every backend's address for a forged MAC:
    // requests for xlb's address and gratuitous replies, 40 rounds 50 ms apart (longer than fall x interval).
    let client = t.client.clone();
    let streams = std::thread::spawn(move || {
        in_ns(&client, move || {
            let pace = StreamPace {
                duration: Duration::from_secs(4),
                chunk: 1024,
                pause: Duration::from_millis(10),
            };
            let handles: Vec<_> = (0..3)
                .map(|_| std::thread::spawn(move || echo_stream(target, pace)))
                .collect();
            Ok(handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("stream panicked"))))
                .collect::<Vec<_>>())
        })
    });
    let forged: Vec<String> = SERVERS
        .iter()
        .flat_map(|ip| {
            [
                format!("Ether(src='{FORGED_MAC}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc='{FORGED_MAC}', psrc='{ip}', pdst='198.18.0.10')"),
                format!("Ether(src='{FORGED_MAC}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=2, hwsrc='{FORGED_MAC}', psrc='{ip}', hwdst='ff:ff:ff:ff:ff:ff', pdst='198.18.0.10')"),
                format!("Ether(src='{FORGED_MAC}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc='{FORGED_MAC}', psrc='{ip}', pdst='{VIP}')"),
            ]
        })
        .collect();
    let script = format!(
        "pkts = [{}]\nfor _ in range(40):\n    sendp(pkts, iface='cli0', verbose=False)\n    time.sleep(0.05)\n",
        forged.join(", ")
    );
    let sent = 40 * forged.len() as u64;
    scapy(&t.client, &script)?;

    // The backends stayed up and are still reached, the streams went through; the forged claims were refused and
    // counted.
    all_healthy(&xlb, 3)?;
    let after = count(&hellos(&t.client, target, 9)?);
    ensure!(after.len() == 3, "after the forgery: {after:?}");
    let results = streams.join().map_err(|_| anyhow::anyhow!("streams panicked"))??;
    for r in results {
        let report = r.context("a stream through a backend failed while ARP was forged")?;
        ensure!(report.bytes > 0, "stream via {} moved nothing", report.server);
    }
    wait_until_ok(Duration::from_secs(10), "every forged ARP counted", || {
        let refused = xlb.total("drops.arp_wrong_link")?;
        ensure!(
            refused == sent,
            "arp_wrong_link counted {refused} of {sent} forged ARPs"
        );
        Ok(())
    })?;
    let down = xlb.proc().stderr().lines().filter(|l| l.contains("DOWN")).count();
    ensure!(down == 0, "servers went down:\n{}", xlb.proc().stderr());
    ensure!(
        xlb.proc().stderr().contains("arp_wrong_link"),
        "no log line for the refused ARP"
    );
    Ok(())
}

#[test]
fn an_arp_flood_does_not_keep_a_new_server_from_being_resolved() -> Result<()> {
    let all = [SERVERS[0], SERVERS[1], SERVERS[2], LATE_SERVER];
    let t = TwoArm::new("arp_flood", &all, 1)?;
    let _sinks = t.sinks("tcp", 8080)?;
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &config(&SERVERS))?;
    let target: SocketAddr = format!("{VIP}:80").parse()?;
    ensure!(count(&hellos(&t.client, target, 6)?).len() == 3, "before the flood");

    // 5000 ARP requests for xlb's backend-side address, each from another sender address (none of them a
    // server's or xlb's): 230 from inside the backend subnet, 4770 from outside it. (Before the fix they filled
    // the 4096-entry neighbour table.)
    let script = "\
pkts = []
for i in range(5000):
    j = i - 230
    a = 20 + i if i < 230 else 1 + j % 250
    b = 0 if i < 230 else 1 + j // 250
    mac = '02:77:%02x:%02x:%02x:01' % (i >> 16 & 255, i >> 8 & 255, i & 255)
    pkts.append(Ether(src=mac, dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc=mac, psrc='198.19.%d.%d' % (b, a), pdst='198.19.0.10'))
sendp(pkts, iface='srv0', verbose=False)
print(len(pkts))
";
    let sent = scapy(&t.servers, script)?;
    ensure!(sent.trim() == "5000", "scapy sent {sent:?}");
    // What reached xlb (an RX ring may overflow under the burst) was answered.
    let answered = wait_until_ok(Duration::from_secs(10), "the flood to be processed", || {
        let answered = xlb.total("arp_replies")?;
        ensure!(answered >= 1000, "{answered} ARP requests answered");
        Ok(answered)
    })?;

    // A server added now is resolved (its health checks and flows need its MAC) and serves promptly.
    let requests_before = xlb.total("arp_requests")?;
    xlb.xlbctl(&["server", "add", "web", &format!("{LATE_SERVER}:8080")])?;
    wait_until_ok(Duration::from_secs(20), "the added server to serve", || {
        let seen = count(&hellos(&t.client, target, 8)?);
        ensure!(seen.contains_key("s4"), "only {seen:?}");
        Ok(())
    })?;
    ensure!(
        xlb.total("arp_requests")? > requests_before,
        "no ARP request for the new server"
    );
    ensure!(
        xlb.total("drops.neighbour_table_full")? == 0,
        "the neighbour table was full"
    );
    all_healthy(&xlb, 4)?;
    // The half of the flood from outside the link's subnet was refused by name.
    let not_in_subnet = xlb.total("drops.arp_not_in_subnet")?;
    ensure!(
        not_in_subnet > 0 && not_in_subnet <= 4770,
        "arp_not_in_subnet counted {not_in_subnet} (of {answered} answered)"
    );
    Ok(())
}
