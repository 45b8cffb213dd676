//! The probes run before a system is measured: a few connections, datagrams and HTTP(S) requests through its
//! VIPs must succeed and reach every server, so a run never measures a system that is not passing traffic.

use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::Value;

use super::lab::{self, SuiteLab};
use super::scenarios::Layer;
use super::systems::RunningSystem;

/// How long a freshly set-up system gets to pass traffic (ARP, XDP attach).
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// A few connections, datagrams and HTTP requests through the VIP must all succeed, and the connections
/// must reach every server, before anything is measured: through the L4 listeners for the L4 scenarios,
/// through the L7 listener (each request on a new connection, every answer a 200) for the L7 ones.
pub(super) fn probe(lab: &SuiteLab, system: &RunningSystem, layers: &[Layer]) -> Result<()> {
    let tcp_target = format!("{}:{}", lab::VIP, lab::VIP_TCP_PORT);
    let udp_target = format!("{}:{}", lab::VIP, lab::VIP_UDP_PORT);
    let http_target = format!("{}:{}", lab::VIP, lab::VIP_HTTP_PORT);
    let l7_target = format!("{}:{}", lab::VIP, lab::VIP_L7_PORT);
    xlb_tests::lab::wait_until_ok(
        PROBE_TIMEOUT,
        &format!("traffic through {}", system.kind().name()),
        || {
            system.check()?;
            if layers.contains(&Layer::L4) {
                probe_l4(lab, &tcp_target, &udp_target, &http_target)?;
            }
            if layers.contains(&Layer::L7) {
                let http = lab.probe(&[
                    "http",
                    "--target",
                    &l7_target,
                    "--new-conn",
                    "--count",
                    "30",
                    "--duration",
                    "5",
                    "--timeout",
                    "1000",
                ])?;
                let completed = http.pointer("/counts/completed").and_then(Value::as_u64).unwrap_or(0);
                let ok = http.pointer("/status/200").and_then(Value::as_u64).unwrap_or(0);
                let servers = http["servers"].as_object().map_or(0, |s| s.len());
                if completed != 30 || ok != 30 || servers != lab::SERVERS.len() {
                    bail!("L7 probe: {completed}/30 requests completed, {ok} answered 200, {servers} servers answered");
                }
            }
            if layers.contains(&Layer::Https) {
                probe_https(lab)?;
            }
            Ok(())
        },
    )
}

/// The HTTPS probe: on both HTTPS listeners, requests on new TLS connections whose certificate is checked
/// against the lab's CA for [`lab::TLS_NAME`], every answer a 200, every server reached.
fn probe_https(lab: &SuiteLab) -> Result<()> {
    let ca = lab.pki().join("ca.pem").display().to_string();
    for port in [lab::VIP_HTTPS_ECDSA_PORT, lab::VIP_HTTPS_RSA_PORT] {
        let target = format!("{}:{port}", lab::VIP);
        let http = lab.probe(&[
            "http",
            "--target",
            &target,
            "--new-conn",
            "--tls",
            "--sni",
            lab::TLS_NAME,
            "--host",
            lab::TLS_NAME,
            "--ca",
            &ca,
            "--count",
            "30",
            "--duration",
            "5",
            "--timeout",
            "1000",
        ])?;
        let completed = http.pointer("/counts/completed").and_then(Value::as_u64).unwrap_or(0);
        let ok = http.pointer("/status/200").and_then(Value::as_u64).unwrap_or(0);
        let servers = http["servers"].as_object().map_or(0, |s| s.len());
        if completed != 30 || ok != 30 || servers != lab::SERVERS.len() {
            bail!(
                "HTTPS probe of {target}: {completed}/30 requests completed, {ok} answered 200, {servers} servers \
                 answered"
            );
        }
    }
    Ok(())
}

/// The L4 probe: TCP connections, UDP round trips and HTTP requests closed by the server.
fn probe_l4(lab: &SuiteLab, tcp_target: &str, udp_target: &str, http_target: &str) -> Result<()> {
    let tcp = lab.probe(&[
        "tcp-cps",
        "--target",
        tcp_target,
        "--count",
        "30",
        "--request",
        "16",
        "--duration",
        "5",
        "--timeout",
        "500",
    ])?;
    let completed = tcp.pointer("/counts/completed").and_then(Value::as_u64).unwrap_or(0);
    let servers = tcp["servers"].as_object().map_or(0, |s| s.len());
    if completed != 30 || servers != lab::SERVERS.len() {
        bail!("tcp probe: {completed}/30 connections completed, {servers} servers answered");
    }
    let udp = lab.probe(&[
        "udp",
        "--target",
        udp_target,
        "--mode",
        "rr",
        "--count",
        "30",
        "--duration",
        "5",
        "--timeout",
        "500",
    ])?;
    let received = udp.pointer("/counts/received").and_then(Value::as_u64).unwrap_or(0);
    if received != 30 {
        bail!("udp probe: {received}/30 replies");
    }
    let http = lab.probe(&[
        "http",
        "--target",
        http_target,
        "--server-close",
        "--count",
        "30",
        "--duration",
        "5",
        "--timeout",
        "500",
    ])?;
    let completed = http.pointer("/counts/completed").and_then(Value::as_u64).unwrap_or(0);
    let servers = http["servers"].as_object().map_or(0, |s| s.len());
    if completed != 30 || servers != lab::SERVERS.len() {
        bail!("http probe: {completed}/30 requests completed, {servers} servers answered");
    }
    Ok(())
}
