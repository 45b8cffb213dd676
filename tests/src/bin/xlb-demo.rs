//! `xlb-demo`: builds a netns lab, runs xlb in it with an embedded default config, and shows what it does
//! with real kernel peers. Everything is removed at the end (also on failure).
//!
//! `xlb-demo [--hold SECONDS]` keeps the lab up that long (at most an hour) before tearing it down, so it can be
//! explored with `ip netns exec`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use xlb_tests::appliance::Appliance;
use xlb_tests::lab::Lab;

const CONFIG: &str = r#"
[node]
name = "demo-lb1"
control_socket = "CONTROL_SOCKET"

[[interface]]
name = "ext0"
queues = [0]
cores = [0]
idle = "adaptive"
addresses = ["198.18.0.10/24"]
"#;

fn step(title: &str) {
    println!("\n=== {title}");
}

fn show(label: &str, text: &str) {
    for line in text.lines() {
        println!("  {label}| {line}");
    }
}

fn demo(hold: Duration) -> Result<()> {
    let lab = Lab::new("demo")?;
    let client = lab.netns("client")?;
    let lb = lab.netns("lb")?;
    lab.veth((&client, "cli0"), (&lb, "ext0"))?;
    client.addr("cli0", "198.18.0.1/24")?;
    lb.addr("ext0", "198.18.0.2/24")?;
    client.disable_offloads("cli0")?;
    step("lab: client 198.18.0.1 <-veth-> lb (kernel 198.18.0.2, xlb owns 198.18.0.10)");
    show("lb", &lb.ip(&["-br", "addr"])?);

    step("starting xlb with the embedded config");
    show("config", CONFIG.trim());
    let xlb = Appliance::start(&lab, &lb, "demo-lb1", CONFIG)?;
    show("ext0", &lb.ip(&["link", "show", "ext0"])?);

    step("client pings 198.18.0.10 (owned only by xlb): ARP and ICMP answered from the AF_XDP stack");
    show(
        "client",
        &client.run("ping", &["-c", "3", "-i", "0.2", "-W", "2", "198.18.0.10"])?,
    );
    show("client", &client.ip(&["neigh", "show", "198.18.0.10"])?);

    step("TCP to a port xlb does not serve: RST (connection refused), counted");
    let out = client.output("socat", &["-T", "2", "-", "TCP:198.18.0.10:22,connect-timeout=2"])?;
    show("client", String::from_utf8_lossy(&out.stderr).trim());

    step("the kernel's own address on the same link still works (XDP_PASS)");
    show("client", &client.run("ping", &["-c", "1", "-W", "2", "198.18.0.2"])?);

    step("xlbctl stats");
    show("xlbctl", &xlb.xlbctl(&["stats"])?);

    if !hold.is_zero() {
        step(&format!(
            "holding the lab for {} s (namespaces: {} {})",
            hold.as_secs(),
            client.name(),
            lb.name()
        ));
        std::thread::sleep(hold);
    }
    step("stopping xlb (SIGTERM) and removing the lab");
    let status = xlb.terminate().context("stopping xlb")?;
    println!("  xlb exited: {status}");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let hold = match args.iter().position(|a| a == "--hold") {
        Some(i) => match args.get(i + 1).and_then(|s| s.parse::<u64>().ok()) {
            Some(s) => Duration::from_secs(s.min(3600)),
            None => {
                eprintln!("usage: xlb-demo [--hold SECONDS]");
                return ExitCode::FAILURE;
            }
        },
        None => Duration::ZERO,
    };
    match demo(hold) {
        Ok(()) => {
            println!("\ndemo finished: lab removed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xlb-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
