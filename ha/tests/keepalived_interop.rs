//! VRRP v3 interoperability with a real keepalived (needs root and `/usr/sbin/keepalived`).
//!
//! Lab: namespaces `kad` (keepalived, 198.18.9.1), `xr` (xlb's [`VrrpRouter`], 198.18.9.2) and `obs` (an
//! observer host, 198.18.9.3) on one bridge in `switch`. The virtual address is 198.18.9.100, VRID 51.
//!
//! The router runs on a thread that entered `xr`, over a raw IPv4 socket for protocol 112 (`IP_HDRINCL`, so
//! `poll_transmit`'s packets go out as they are) joined to 224.0.0.18; its gratuitous ARPs go out through an
//! `AF_PACKET` socket. On [`VrrpEvent::BecameMaster`] the thread adds the virtual address to `xr`'s
//! interface and removes it on the way out, as keepalived does on its side.
//!
//! A crash is a SIGKILL of keepalived's VRRP child (run with `-R`, so the parent does not respawn it): killing
//! only the parent makes the child stop cleanly, with a priority-0 advert.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use xlb_ha::net::{GarpSocket, VrrpSocket};
use xlb_ha::vrrp::{
    VrrpConfig, VrrpCounters, VrrpEvent, VrrpRouter, VrrpState, MAX_PACKET_LEN, VRRP_MULTICAST, VRRP_PROTOCOL,
};
use xlb_stack::wire::{EthernetAddress, IpProtocol, Ipv4Packet};
use xlb_tests::keepalived::{Keepalived, KeepalivedConfig, KEEPALIVED};
use xlb_tests::lab::{wait_until, wait_until_ok, Lab, Netns};

const VRID: u8 = 51;
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 100);
const KAD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 1);
const XR_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 2);
const OBS_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 3);
/// Generous bound for anything that should take a few advert intervals.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Longest sleep of the router thread between two looks at its command flags.
const TICK: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------

struct Topology {
    lab: Lab,
    kad: Netns,
    xr: Netns,
    obs: Netns,
}

fn topology(name: &str) -> Result<Topology> {
    ensure!(Path::new(KEEPALIVED).is_file(), "{KEEPALIVED} is not installed");
    let lab = Lab::new(name)?;
    let switch = lab.netns("switch")?;
    let kad = lab.netns("kad")?;
    let xr = lab.netns("xr")?;
    let obs = lab.netns("obs")?;
    for (ns, port, ip) in [(&kad, "p-kad", KAD_IP), (&xr, "p-xr", XR_IP), (&obs, "p-obs", OBS_IP)] {
        lab.veth((ns, "eth0"), (&switch, port))?;
        ns.addr("eth0", &format!("{ip}/24"))?;
    }
    lab.bridge(&switch, "br0", &["p-kad", "p-xr", "p-obs"])?;
    obs.ping(&KAD_IP.to_string())?;
    obs.ping(&XR_IP.to_string())?;
    Ok(Topology { lab, kad, xr, obs })
}

fn has_vip(ns: &Netns) -> Result<bool> {
    Ok(ns
        .ip(&["-o", "-4", "addr", "show", "dev", "eth0"])?
        .contains(&format!("{VIP}/32")))
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Whether `obs` has the VIP in its neighbour table at `mac`.
fn obs_sees_vip_at(obs: &Netns, mac: [u8; 6]) -> Result<bool> {
    let neigh = obs.ip(&["neigh", "show", "dev", "eth0", &VIP.to_string()])?;
    Ok(neigh.contains(&mac_text(mac)))
}

// ---------------------------------------------------------------------------
// keepalived
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// xlb's router on a raw socket
// ---------------------------------------------------------------------------

/// What the router thread shows the test.
#[derive(Debug, Clone)]
struct Status {
    state: VrrpState,
    master: Option<Ipv4Addr>,
    counters: VrrpCounters,
    errors: Vec<String>,
    failed: Option<String>,
}

/// xlb's VRRP router running in `xr`.
struct XlbNode {
    status: Arc<Mutex<Status>>,
    events: Receiver<(Instant, VrrpEvent)>,
    shutdown: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl XlbNode {
    fn start(ns: &Netns, config: VrrpConfig) -> Result<XlbNode> {
        let mac = ns.mac("eth0")?;
        let status = Arc::new(Mutex::new(Status {
            state: VrrpState::Initialize,
            master: None,
            counters: VrrpCounters::default(),
            errors: Vec::new(),
            failed: None,
        }));
        let (tx, events) = mpsc::channel();
        let shutdown = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (ns, status, shutdown, stop) = (ns.clone(), status.clone(), shutdown.clone(), stop.clone());
            thread::spawn(move || {
                let result = drive(&ns, config, mac, &status, &tx, &shutdown, &stop);
                if let Err(e) = result {
                    status.lock().unwrap().failed = Some(format!("{e:#}"));
                }
            })
        };
        Ok(XlbNode {
            status,
            events,
            shutdown,
            stop,
            thread: Some(thread),
        })
    }

    fn status(&self) -> Result<Status> {
        let s = self.status.lock().unwrap().clone();
        if let Some(e) = &s.failed {
            bail!("the xlb router thread failed: {e}");
        }
        Ok(s)
    }

    /// Waits for `event`, returning when the router emitted it; other events are skipped.
    fn wait_event(&self, event: VrrpEvent, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            self.status()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no {event:?} from xlb within {timeout:?}; status {:?}", self.status()?);
            }
            match self.events.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok((at, e)) if e == event => return Ok(at),
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the xlb router thread ended"),
            }
        }
    }

    /// Asks the router to shut down (priority-0 advert) and waits for it to stop.
    fn shutdown(&self) -> Result<Instant> {
        self.shutdown.store(true, Ordering::Relaxed);
        self.wait_event(VrrpEvent::Stopped, TIMEOUT)
    }
}

impl Drop for XlbNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                eprintln!("the xlb router thread panicked");
            }
        }
    }
}

/// The router thread: enters `ns`, opens the sockets and runs the router until `stop`.
fn drive(
    ns: &Netns,
    config: VrrpConfig,
    mac: [u8; 6],
    status: &Mutex<Status>,
    events: &Sender<(Instant, VrrpEvent)>,
    shutdown: &AtomicBool,
    stop: &AtomicBool,
) -> Result<()> {
    ns.enter_current_thread()?;
    let vrrp = VrrpSocket::open("eth0", config.source)?;
    let garp = GarpSocket::open("eth0", EthernetAddress(mac))?;
    let mut router = VrrpRouter::new(config, Instant::now());
    router.start(Instant::now());
    let mut buf = vec![0u8; MAX_PACKET_LEN.max(2048)];
    let mut holds_vip = false;
    let result = (|| -> Result<()> {
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if shutdown.swap(false, Ordering::Relaxed) {
                router.shutdown(now);
            }
            if router.poll_timeout().is_some_and(|t| t <= now) {
                router.handle_timeout(now);
            }
            // Output: adverts, gratuitous ARPs, events (taking or releasing the VIP).
            while let Some(n) = router.poll_transmit(now, &mut buf) {
                vrrp.send(&buf[..n])?;
            }
            while let Some(vip) = router.poll_garp() {
                garp.send(vip)?;
            }
            let mut happened = Vec::new();
            while let Some(event) = router.poll_event() {
                match event {
                    VrrpEvent::BecameMaster if !holds_vip => {
                        ns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "eth0"])?;
                        holds_vip = true;
                    }
                    VrrpEvent::BecameBackup | VrrpEvent::Stopped if holds_vip => {
                        ns.ip(&["addr", "del", &format!("{VIP}/32"), "dev", "eth0"])?;
                        holds_vip = false;
                    }
                    _ => {}
                }
                happened.push((Instant::now(), event));
            }
            {
                let mut s = status.lock().unwrap();
                s.state = router.state();
                s.master = router.master();
                s.counters = *router.counters();
            }
            // After the status: a test woken by an event reads the state that event produced.
            for e in happened {
                let _ = events.send(e);
            }
            // Input, or sleep until the next timer (or a tick, to see commands).
            let wait = router
                .poll_timeout()
                .map_or(TICK, |t| t.saturating_duration_since(Instant::now()).min(TICK));
            if vrrp.wait_readable(wait)? {
                while let Some(n) = vrrp.recv(&mut buf)? {
                    let now = Instant::now();
                    let Ok(ip) = Ipv4Packet::new_checked(&buf[..n]) else {
                        continue;
                    };
                    if ip.next_header() != IpProtocol::Unknown(VRRP_PROTOCOL) || ip.dst_addr() != VRRP_MULTICAST {
                        continue;
                    }
                    if let Err(e) = router.handle_advertisement(now, ip.src_addr(), ip.hop_limit(), ip.payload()) {
                        status
                            .lock()
                            .unwrap()
                            .errors
                            .push(format!("from {}: {e}", ip.src_addr()));
                    }
                }
            }
        }
        Ok(())
    })();
    // Leave the namespace as found; the lab deletes it anyway.
    if holds_vip {
        let _ = ns.ip(&["addr", "del", &format!("{VIP}/32"), "dev", "eth0"]);
    }
    result
}

fn xlb_config(priority: u8, advert_interval_cs: u16) -> VrrpConfig {
    let mut c = VrrpConfig::new(VRID, priority, XR_IP, vec![VIP]);
    c.advert_interval_cs = advert_interval_cs;
    c
}

/// Master_Down_Interval of a router with `priority` listening to a Master advertising every `interval_cs`.
fn master_down_interval(priority: u8, interval_cs: u16) -> Duration {
    VrrpRouter::new(xlb_config(priority, interval_cs), Instant::now()).master_down_interval()
}

fn skew_time(priority: u8, interval_cs: u16) -> Duration {
    VrrpRouter::new(xlb_config(priority, interval_cs), Instant::now()).skew_time()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// keepalived (priority 200) is Master and xlb (100) follows it; when keepalived crashes, xlb takes over
/// within its Master_Down_Interval and moves the VIP (the observer's ARP entry follows the gratuitous ARP).
#[test]
fn keepalived_master_then_crash_xlb_takes_over() -> Result<()> {
    let t = topology("keepalived_master_then_crash_xlb_takes_over")?;
    let ka = Keepalived::start(
        &t.lab,
        &t.kad,
        &KeepalivedConfig {
            name: "kad",
            interface: "eth0",
            vrid: VRID,
            priority: 200,
            advert_int: "1",
            vip: &VIP.to_string(),
        },
    )?;
    wait_until_ok(TIMEOUT, "keepalived to become MASTER and take the VIP", || {
        ka.proc().check_running()?;
        ensure!(has_vip(&t.kad)?, "no VIP in kad yet");
        Ok(())
    })?;
    let kad_mac = t.kad.mac("eth0")?;
    let xr_mac = t.xr.mac("eth0")?;
    t.obs.ping(&VIP.to_string())?;
    ensure!(obs_sees_vip_at(&t.obs, kad_mac)?, "obs should reach the VIP at kad");

    let xlb = XlbNode::start(&t.xr, xlb_config(100, 100))?;
    xlb.wait_event(VrrpEvent::BecameBackup, TIMEOUT)?;
    // Three of keepalived's adverts (3 s) are accepted: xlb stays Backup, following keepalived.
    wait_until_ok(TIMEOUT, "xlb to accept three adverts from keepalived", || {
        let s = xlb.status()?;
        ensure!(s.counters.adverts_received >= 3, "{s:?}");
        Ok(())
    })?;
    let s = xlb.status()?;
    assert_eq!(s.state, VrrpState::Backup, "{s:?}");
    assert_eq!(s.master, Some(KAD_IP));
    assert_eq!(s.counters.became_master, 0, "xlb never took over: {s:?}");
    assert!(
        s.errors.is_empty(),
        "keepalived's adverts pass the RFC 5798 checks: {:?}",
        s.errors
    );
    assert_eq!(s.counters.address_mismatch, 0);
    assert!(has_vip(&t.kad)? && !has_vip(&t.xr)?);
    ka.check_log_clean()?;

    // Crash: SIGKILL keepalived's VRRP process. No priority-0 advert; xlb waits Master_Down_Interval.
    let killed = Instant::now();
    ka.crash()?;
    let became = xlb.wait_event(VrrpEvent::BecameMaster, TIMEOUT)?;
    let takeover = became.saturating_duration_since(killed);
    let mdi = master_down_interval(100, 100);
    println!("xlb took over {takeover:?} after keepalived was killed (Master_Down_Interval {mdi:?})");
    let s = xlb.status()?;
    assert_eq!(s.state, VrrpState::Master);
    assert_eq!(
        s.counters.priority_zero_received, 0,
        "a crash sends no priority-0 advert"
    );
    assert!(takeover <= mdi + Duration::from_secs(3), "took {takeover:?}");

    // The crashed keepalived left its VIP configured; a dead box would not answer, so remove it.
    if has_vip(&t.kad)? {
        println!("note: a SIGKILLed keepalived leaves {VIP} configured in kad");
        t.kad.ip(&["addr", "del", &format!("{VIP}/32"), "dev", "eth0"])?;
    }
    wait_until(TIMEOUT, "the xr VIP", || has_vip(&t.xr).unwrap_or(false))?;
    // The gratuitous ARPs moved the observer's entry for the VIP to xr, and the VIP answers from there.
    wait_until_ok(
        TIMEOUT,
        "obs to learn the VIP at xr's MAC from a gratuitous ARP",
        || {
            ensure!(obs_sees_vip_at(&t.obs, xr_mac)?, "obs still has the old entry");
            Ok(())
        },
    )?;
    t.obs.ping(&VIP.to_string())?;
    assert!(xlb.status()?.counters.garps >= 1);
    Ok(())
}

/// xlb (priority 200, 0.5 s adverts) is Master and keepalived (100) stays BACKUP; xlb's shutdown sends a
/// priority-0 advert and keepalived takes over within its Skew_Time instead of three intervals.
#[test]
fn xlb_master_keepalived_backup_then_clean_handover() -> Result<()> {
    let t = topology("xlb_master_keepalived_backup_then_clean_handover")?;
    let xlb = XlbNode::start(&t.xr, xlb_config(200, 50))?;
    xlb.wait_event(VrrpEvent::BecameMaster, TIMEOUT)?;
    wait_until(TIMEOUT, "the VIP on xr", || has_vip(&t.xr).unwrap_or(false))?;

    let ka = Keepalived::start(
        &t.lab,
        &t.kad,
        &KeepalivedConfig {
            name: "kad",
            interface: "eth0",
            vrid: VRID,
            priority: 100,
            advert_int: "0.5",
            vip: &VIP.to_string(),
        },
    )?;
    wait_until_ok(TIMEOUT, "keepalived to enter BACKUP", || {
        ka.proc().check_running()?;
        ensure!(ka.log().contains("Entering BACKUP STATE"), "not yet");
        Ok(())
    })?;
    // Well past keepalived's own Master_Down_Interval (1.8 s): it must stay BACKUP on our adverts.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(4) {
        ensure!(
            !has_vip(&t.kad)?,
            "keepalived took the VIP from a higher-priority xlb:\n{}",
            ka.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        !ka.log().contains("Entering MASTER STATE"),
        "keepalived went MASTER:\n{}",
        ka.log()
    );
    ka.check_log_clean()?;
    let s = xlb.status()?;
    assert_eq!(s.state, VrrpState::Master, "{s:?}");
    assert!(s.errors.is_empty(), "{:?}", s.errors);

    // Clean hand-over: priority 0, keepalived waits only its Skew_Time.
    let stopped = xlb.shutdown()?;
    wait_until_ok(TIMEOUT, "keepalived to take the VIP", || {
        ensure!(has_vip(&t.kad)?, "no VIP in kad yet");
        Ok(())
    })?;
    let handover = stopped.elapsed();
    let skew = skew_time(100, 50);
    let mdi = master_down_interval(100, 50);
    println!(
        "keepalived took over {handover:?} after xlb's priority-0 advert (its Skew_Time {skew:?}, \
         Master_Down_Interval {mdi:?}; includes polling `ip addr`)"
    );
    let s = xlb.status()?;
    assert_eq!(s.counters.priority_zero_sent, 1);
    assert_eq!(s.state, VrrpState::Initialize);
    assert!(!has_vip(&t.xr)?, "xlb released the VIP");
    wait_until(TIMEOUT, "keepalived to log MASTER", || {
        ka.log().contains("Entering MASTER STATE")
    })?;
    let log = ka.log();
    let zero = log
        .lines()
        .find(|l| l.contains("priority 0"))
        .unwrap_or("(no priority-0 line)");
    println!("keepalived: {zero}");
    Ok(())
}
