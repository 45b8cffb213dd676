//! The virtual router state machine (RFC 5798 §6.4). See the module docs of [`crate::vrrp`].

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::config::centiseconds;
use super::packet::{build_advert, packet_len, VrrpPacket, TYPE_ADVERTISEMENT, VRRP_MULTICAST, VRRP_TTL, VRRP_VERSION};
use super::{VrrpConfig, VrrpCounters, VrrpError, VrrpEvent, VrrpState};

/// The state with its timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Initialize,
    Backup {
        /// When the Master_Down_Timer fires.
        down_at: Instant,
        /// With a `preempt_delay`: when we take over from the lower-priority Master we hear.
        preempt_at: Option<Instant>,
    },
    Master {
        /// When the Adver_Timer fires.
        adver_at: Instant,
    },
}

/// Gratuitous ARP rounds still to hand out after becoming Master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GarpSchedule {
    next_at: Instant,
    rounds_left: u8,
}

/// One virtual router (sans-IO). See the module docs of [`crate::vrrp`].
#[derive(Debug)]
pub struct VrrpRouter {
    config: VrrpConfig,
    phase: Phase,
    /// When the current state was entered.
    since: Instant,
    /// Master_Adver_Interval: ours while Master, else the current Master's, learned from its adverts.
    master_adver_interval_cs: u16,
    /// The Master we listen to (ourselves while Master).
    master: Option<Ipv4Addr>,
    /// The priority of the advert owed to [`VrrpRouter::poll_transmit`], if one is.
    owed_advert: Option<u8>,
    /// When [`VrrpRouter::poll_transmit`] last wrote an advert.
    last_advert: Option<Instant>,
    garps: VecDeque<Ipv4Addr>,
    garp_schedule: Option<GarpSchedule>,
    events: VecDeque<VrrpEvent>,
    /// The sender whose address mismatch was last reported.
    mismatch_from: Option<Ipv4Addr>,
    counters: VrrpCounters,
}

impl VrrpRouter {
    /// A virtual router in state Initialize; nothing happens until [`VrrpRouter::start`].
    ///
    /// # Panics
    ///
    /// If `config` does not pass [`VrrpConfig::validate`]: a configuration error the caller checks first.
    pub fn new(config: VrrpConfig, now: Instant) -> Self {
        if let Err(e) = config.validate() {
            panic!("invalid VRRP config: {e}");
        }
        let vips = config.vips.len();
        VrrpRouter {
            master_adver_interval_cs: config.advert_interval_cs,
            phase: Phase::Initialize,
            since: now,
            master: None,
            owed_advert: None,
            last_advert: None,
            garps: VecDeque::with_capacity(vips),
            garp_schedule: None,
            events: VecDeque::with_capacity(4),
            mismatch_from: None,
            counters: VrrpCounters::default(),
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &VrrpConfig {
        &self.config
    }

    /// The current state.
    pub fn state(&self) -> VrrpState {
        match self.phase {
            Phase::Initialize => VrrpState::Initialize,
            Phase::Backup { .. } => VrrpState::Backup,
            Phase::Master { .. } => VrrpState::Master,
        }
    }

    /// Whether we are Master.
    pub fn is_master(&self) -> bool {
        matches!(self.phase, Phase::Master { .. })
    }

    /// Whether packets addressed to the virtual addresses should be accepted locally: as Master, when we own
    /// them or `accept_mode` is on (RFC 5798 §6.4.3).
    pub fn accepts_vip_traffic(&self) -> bool {
        self.is_master() && (self.config.is_owner() || self.config.accept_mode)
    }

    /// When the current state was entered.
    pub fn state_since(&self) -> Instant {
        self.since
    }

    /// When the last advert was written by [`VrrpRouter::poll_transmit`] (the `now` passed to it).
    pub fn last_advert_sent(&self) -> Option<Instant> {
        self.last_advert
    }

    /// The primary address of the current Master as far as we know: ours while Master, the sender of the last
    /// accepted advert while Backup, `None` before any or while stopped.
    pub fn master(&self) -> Option<Ipv4Addr> {
        self.master
    }

    /// Master_Adver_Interval: ours while Master, the Master's (from its adverts) while Backup.
    pub fn master_adver_interval(&self) -> Duration {
        centiseconds(self.master_adver_interval_cs)
    }

    /// Skew_Time: `(256 - priority) x Master_Adver_Interval / 256`, to the microsecond.
    pub fn skew_time(&self) -> Duration {
        let interval_us = u64::from(self.master_adver_interval_cs) * 10_000;
        Duration::from_micros((256 - u64::from(self.config.priority)) * interval_us / 256)
    }

    /// Master_Down_Interval: `3 x Master_Adver_Interval + Skew_Time`, how long a Backup waits for an advert.
    pub fn master_down_interval(&self) -> Duration {
        3 * self.master_adver_interval() + self.skew_time()
    }

    /// Length of the packets [`VrrpRouter::poll_transmit`] writes.
    pub fn packet_len(&self) -> usize {
        packet_len(self.config.vips.len())
    }

    /// What the router did so far.
    pub fn counters(&self) -> &VrrpCounters {
        &self.counters
    }

    /// Starts the router (RFC 5798 §6.4.1): the address owner becomes Master at once (advert and gratuitous
    /// ARPs due); any other router becomes Backup and waits one Master_Down_Interval for a Master. Does
    /// nothing unless in Initialize.
    pub fn start(&mut self, now: Instant) {
        if self.phase != Phase::Initialize {
            return;
        }
        if self.config.is_owner() {
            self.become_master(now);
        } else {
            self.become_backup(now, self.config.advert_interval_cs, None);
        }
    }

    /// Stops the router (RFC 5798 §6.4.2, §6.4.3): a Master owes one last advert with priority 0 so a Backup
    /// takes over within Skew_Time; either way the router goes to Initialize and emits
    /// [`VrrpEvent::Stopped`]. Does nothing in Initialize. [`VrrpRouter::start`] may be called again.
    pub fn shutdown(&mut self, now: Instant) {
        match self.phase {
            Phase::Initialize => return,
            Phase::Master { .. } => self.owed_advert = Some(0),
            Phase::Backup { .. } => {}
        }
        self.phase = Phase::Initialize;
        self.since = now;
        self.master = None;
        self.cancel_garps();
        self.counters.stopped += 1;
        self.events.push_back(VrrpEvent::Stopped);
    }

    /// Offers a received advertisement: `vrrp` is the IPv4 payload, `src` and `ttl` come from its IPv4
    /// header (the caller has checked it is protocol 112 to 224.0.0.18).
    ///
    /// A packet that fails the RFC 5798 §7.1 checks is an `Err` that changes nothing but a counter. A valid
    /// one drives the state machine (see the module docs); it may owe an advert to
    /// [`VrrpRouter::poll_transmit`] or emit an event.
    pub fn handle_advertisement(&mut self, now: Instant, src: Ipv4Addr, ttl: u8, vrrp: &[u8]) -> Result<(), VrrpError> {
        let advert = match self.check(src, ttl, vrrp) {
            Ok(advert) => advert,
            Err(e) => {
                self.count_rejection(&e);
                return Err(e);
            }
        };
        self.counters.adverts_received += 1;
        self.check_addresses(src, &advert);
        let (priority, interval_cs) = (advert.priority(), advert.max_adver_int());
        if priority == 0 {
            self.counters.priority_zero_received += 1;
        }
        let ours = self.config.priority;
        match self.phase {
            Phase::Initialize => self.counters.adverts_discarded += 1,
            Phase::Backup { preempt_at, .. } => {
                if priority == 0 {
                    // The Master is stopping: the highest-priority Backup (shortest skew) takes over first.
                    let down_at = now + self.skew_time();
                    self.phase = Phase::Backup { down_at, preempt_at };
                } else if !self.config.preempt || priority >= ours {
                    self.follow(now, src, interval_cs, None);
                } else if self.config.preempt_delay.is_zero() {
                    // A lower-priority Master and we preempt: let the timer run out.
                    self.counters.adverts_discarded += 1;
                } else {
                    // A lower-priority Master and we preempt after a delay: keep it until the delay is over.
                    let preempt_at = preempt_at.unwrap_or(now + self.config.preempt_delay);
                    if now < preempt_at {
                        self.follow(now, src, interval_cs, Some(preempt_at));
                    } else {
                        self.counters.adverts_discarded += 1;
                    }
                }
            }
            Phase::Master { .. } => {
                if priority == 0 {
                    // Another Master stopping: advertise now so its Backups see one and stay Backup.
                    self.owed_advert = Some(ours);
                    self.phase = Phase::Master {
                        adver_at: now + self.config.advert_interval(),
                    };
                } else if priority > ours || (priority == ours && src > self.config.source) {
                    self.become_backup(now, interval_cs, Some(src));
                } else {
                    self.counters.adverts_discarded += 1;
                }
            }
        }
        Ok(())
    }

    /// Writes the next packet to send into `buf` (a complete IPv4 packet: header and VRRP advert, from
    /// `source` to 224.0.0.18, TTL 255, protocol 112) and returns its length.
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`VrrpRouter::packet_len`] ([`super::MAX_PACKET_LEN`] always suffices).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let priority = self.owed_advert.take()?;
        debug_assert!(priority == 0 || self.is_master(), "only a Master owes periodic adverts");
        let len = build_advert(
            buf,
            self.config.source,
            self.config.vrid,
            priority,
            self.config.advert_interval_cs,
            &self.config.vips,
        );
        self.last_advert = Some(now);
        self.counters.adverts_sent += 1;
        if priority == 0 {
            self.counters.priority_zero_sent += 1;
        }
        Some(len)
    }

    /// The next virtual address to announce with a gratuitous ARP. After becoming Master every address is
    /// due once per round, `garp_repeat` rounds `garp_interval` apart (the first at once); later rounds
    /// become due in [`VrrpRouter::handle_timeout`]. Leaving Master cancels what is left.
    pub fn poll_garp(&mut self) -> Option<Ipv4Addr> {
        let vip = self.garps.pop_front()?;
        self.counters.garps += 1;
        Some(vip)
    }

    /// The next state change or report.
    pub fn poll_event(&mut self) -> Option<VrrpEvent> {
        self.events.pop_front()
    }

    /// When [`VrrpRouter::handle_timeout`] must next be called: the Master_Down_Timer (or the end of a
    /// preempt delay) while Backup, the Adver_Timer or the next gratuitous ARP round while Master, never
    /// while stopped.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Initialize => None,
            Phase::Backup { down_at, preempt_at } => Some(preempt_at.map_or(down_at, |p| p.min(down_at))),
            Phase::Master { adver_at } => Some(self.garp_schedule.map_or(adver_at, |g| g.next_at.min(adver_at))),
        }
    }

    /// Fires the timers due at `now`: a Backup whose Master is down (or whose preempt delay is over) becomes
    /// Master; a Master owes its periodic advert, and the next round of gratuitous ARPs when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Initialize => {}
            Phase::Backup { down_at, preempt_at } => {
                if now >= down_at || preempt_at.is_some_and(|p| now >= p) {
                    self.become_master(now);
                }
            }
            Phase::Master { adver_at } => {
                if now >= adver_at {
                    self.owed_advert = Some(self.config.priority);
                    self.phase = Phase::Master {
                        adver_at: now + self.config.advert_interval(),
                    };
                }
                if let Some(g) = self.garp_schedule.filter(|g| now >= g.next_at) {
                    self.garps.extend(self.config.vips.iter().copied());
                    self.garp_schedule = (g.rounds_left > 1).then(|| GarpSchedule {
                        next_at: now + self.config.garp_interval,
                        rounds_left: g.rounds_left - 1,
                    });
                }
            }
        }
    }

    /// The §7.1 checks, in the RFC's order.
    fn check<'a>(&self, src: Ipv4Addr, ttl: u8, vrrp: &'a [u8]) -> Result<VrrpPacket<&'a [u8]>, VrrpError> {
        if ttl != VRRP_TTL {
            return Err(VrrpError::BadTtl(ttl));
        }
        // The version first: a version 2 packet is reported as such, whatever its length.
        if let Some(version) = vrrp.first().map(|b| b >> 4).filter(|v| *v != VRRP_VERSION) {
            return Err(VrrpError::BadVersion(version));
        }
        let advert = VrrpPacket::new_checked(vrrp)?;
        if advert.kind() != TYPE_ADVERTISEMENT {
            return Err(VrrpError::BadType(advert.kind()));
        }
        if !advert.verify_checksum(src, VRRP_MULTICAST) {
            return Err(VrrpError::BadChecksum {
                found: advert.checksum(),
                expected: advert.compute_checksum(src, VRRP_MULTICAST),
            });
        }
        if advert.vrid() != self.config.vrid {
            return Err(VrrpError::WrongVrid {
                got: advert.vrid(),
                ours: self.config.vrid,
            });
        }
        if self.config.is_owner() {
            return Err(VrrpError::AddressOwner(self.config.vrid));
        }
        if advert.max_adver_int() == 0 {
            return Err(VrrpError::ZeroInterval);
        }
        if src == self.config.source {
            return Err(VrrpError::OwnPacket(src));
        }
        Ok(advert)
    }

    fn count_rejection(&mut self, e: &VrrpError) {
        let c = &mut self.counters;
        let counter = match e {
            VrrpError::Truncated { .. } => &mut c.truncated,
            VrrpError::BadTtl(_) => &mut c.bad_ttl,
            VrrpError::BadVersion(_) => &mut c.bad_version,
            VrrpError::BadType(_) => &mut c.bad_type,
            VrrpError::BadChecksum { .. } => &mut c.bad_checksum,
            VrrpError::WrongVrid { .. } => &mut c.bad_vrid,
            VrrpError::AddressOwner(_) => &mut c.owner_discards,
            VrrpError::ZeroInterval => &mut c.bad_interval,
            VrrpError::OwnPacket(_) => &mut c.own_adverts,
        };
        *counter += 1;
    }

    /// Counts and reports (once per sender) adverts whose address list differs from ours, as a set.
    fn check_addresses(&mut self, src: Ipv4Addr, advert: &VrrpPacket<&[u8]>) {
        let vips = &self.config.vips;
        let same = advert.addresses().len() == vips.len() && advert.addresses().all(|a| vips.contains(&a));
        if same {
            if self.mismatch_from == Some(src) {
                self.mismatch_from = None;
            }
            return;
        }
        self.counters.address_mismatch += 1;
        if self.mismatch_from != Some(src) {
            self.mismatch_from = Some(src);
            self.events.push_back(VrrpEvent::AddressMismatch { from: src });
        }
    }

    /// Backup hearing a Master it accepts: learn its interval and restart the Master_Down_Timer.
    fn follow(&mut self, now: Instant, master: Ipv4Addr, interval_cs: u16, preempt_at: Option<Instant>) {
        self.master_adver_interval_cs = interval_cs;
        self.master = Some(master);
        self.phase = Phase::Backup {
            down_at: now + self.master_down_interval(),
            preempt_at,
        };
    }

    fn become_master(&mut self, now: Instant) {
        self.master_adver_interval_cs = self.config.advert_interval_cs;
        self.phase = Phase::Master {
            adver_at: now + self.config.advert_interval(),
        };
        self.since = now;
        self.master = Some(self.config.source);
        self.owed_advert = Some(self.config.priority);
        self.garps.clear();
        if self.config.garp_repeat > 0 {
            self.garps.extend(self.config.vips.iter().copied());
        }
        self.garp_schedule = (self.config.garp_repeat > 1).then(|| GarpSchedule {
            next_at: now + self.config.garp_interval,
            rounds_left: self.config.garp_repeat - 1,
        });
        self.counters.became_master += 1;
        self.events.push_back(VrrpEvent::BecameMaster);
    }

    fn become_backup(&mut self, now: Instant, interval_cs: u16, master: Option<Ipv4Addr>) {
        self.master_adver_interval_cs = interval_cs;
        self.phase = Phase::Backup {
            down_at: now + self.master_down_interval(),
            preempt_at: None,
        };
        self.since = now;
        self.master = master;
        self.owed_advert = None;
        self.cancel_garps();
        self.counters.became_backup += 1;
        self.events.push_back(VrrpEvent::BecameBackup);
    }

    fn cancel_garps(&mut self) {
        self.garps.clear();
        self.garp_schedule = None;
    }
}
