//! ARP for the appliance's addresses: answers requests for owned addresses, and learns what senders claim
//! under the rules of [`crate::neighbour`] (refused claims are counted and logged at most once per interval).

use std::time::Instant;

use super::{Ipv4Handler, Link, LocalStack};
use crate::drops::{DropReason, STACK_DROPS};
use crate::neighbour::ArpOutcome;
use crate::pipeline::{Frame, PortId, Verdict};
use crate::wire::build::{self, ETHERTYPE_IPV4};
use crate::wire::{EthernetAddress, Ipv4Addr, ARP_LEN, ETH_HEADER_LEN};

/// How often refused ARP packets are logged (with the count since the last line).
const ARP_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Refused ARP since the last log line.
#[derive(Debug, Default)]
pub(super) struct ArpLog {
    next: Option<Instant>,
    refused: u64,
}

/// Which subnets `ip` belongs to, seen from `port`: this link's, another link's only, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Membership {
    ThisLink,
    OtherLink,
    None,
}

fn membership(links: &[Link], port: PortId, ip: Ipv4Addr) -> Membership {
    let on = |l: &Link| l.addresses.iter().any(|n| n.prefix < 32 && n.contains(ip));
    if links.get(port).is_some_and(on) {
        Membership::ThisLink
    } else if links.iter().any(on) {
        Membership::OtherLink
    } else {
        Membership::None
    }
}

impl<H: Ipv4Handler> LocalStack<H> {
    pub(super) fn handle_arp(&mut self, now: Instant, port: PortId, frame: &mut Frame<'_>) -> Verdict {
        let data = frame.data_mut();
        let Some(arp) = data.get_mut(ETH_HEADER_LEN..ETH_HEADER_LEN + ARP_LEN) else {
            return Verdict::Drop(DropReason::MalformedArp);
        };
        // Ethernet (1), IPv4, 6-byte MACs, 4-byte addresses.
        if arp[0..2] != [0, 1] || arp[2..4] != ETHERTYPE_IPV4.to_be_bytes() || arp[4] != 6 || arp[5] != 4 {
            return Verdict::Drop(DropReason::MalformedArp);
        }
        let operation = u16::from_be_bytes([arp[6], arp[7]]);
        let sender_mac = EthernetAddress::from_bytes(&arp[8..14]);
        let sender_ip = Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]);
        let target_ip = Ipv4Addr::new(arp[24], arp[25], arp[26], arp[27]);
        let for_us = self.owned.get(&target_ip).is_some_and(|mask| mask & (1 << port) != 0);
        if !for_us {
            return Verdict::Drop(DropReason::ArpNotForUs);
        }
        let refused = if sender_mac.is_unicast() && !sender_ip.is_unspecified() {
            self.learn_arp(now, port, operation != 1, sender_ip, sender_mac)
        } else {
            None
        };
        if operation != 1 {
            return refused.map_or(Verdict::Consumed, Verdict::Drop);
        }
        if let Some(reason) = refused {
            // Answered all the same (the answer only goes to the asker), but what it claims is not learned.
            self.counters.drop(reason);
        }
        let mac = self.links[port].mac;
        let len = build::arp(
            frame.buffer_mut(),
            sender_mac,
            2,
            (mac, target_ip),
            (sender_mac, sender_ip),
        );
        frame.set_len(len);
        self.counters.arp_replies += 1;
        Verdict::Transmit(port)
    }

    /// Applies what an ARP packet for us says about its sender, under the rules of the module
    /// [`crate::neighbour`]: the sender must be in this link's subnets, ARP never creates an entry, and a MAC
    /// change is locked for `locktime`. Returns the reason a claim was refused.
    fn learn_arp(
        &mut self,
        now: Instant,
        port: PortId,
        reply: bool,
        ip: Ipv4Addr,
        mac: EthernetAddress,
    ) -> Option<DropReason> {
        let refused = match membership(&self.links, port, ip) {
            Membership::OtherLink => Some(DropReason::ArpWrongLink),
            Membership::None => Some(DropReason::ArpNotInSubnet),
            Membership::ThisLink => match self.neighbours.on_arp(now, port, ip, mac, reply) {
                ArpOutcome::Learned => {
                    if let Some(sync) = &mut self.sync {
                        sync.publish(port, ip, mac);
                    }
                    None
                }
                // A request from a host we are not resolving is ordinary traffic (clients asking for a VIP).
                ArpOutcome::Unchanged | ArpOutcome::Unknown if !reply => None,
                // A reply this worker did not ask for may answer another worker's request (replies land on any
                // queue): passed on as a claim, which only a worker resolving that address accepts.
                ArpOutcome::Unchanged | ArpOutcome::Unknown if self.sync.is_some() => {
                    if let Some(sync) = &mut self.sync {
                        sync.publish_claim(port, ip, mac);
                    }
                    None
                }
                ArpOutcome::Unchanged => None,
                ArpOutcome::Unknown => Some(DropReason::ArpUnsolicited),
                ArpOutcome::Locked => Some(DropReason::ArpLocked),
            },
        };
        if let Some(reason) = refused {
            self.log_refused_arp(now, port, reason, ip, mac);
        }
        refused
    }

    /// Logs a refused ARP claim, at most once per [`ARP_LOG_INTERVAL`] (with the number refused since).
    fn log_refused_arp(&mut self, now: Instant, port: PortId, reason: DropReason, ip: Ipv4Addr, mac: EthernetAddress) {
        let log = &mut self.arp_log;
        log.refused += 1;
        if log.next.is_some_and(|t| now < t) {
            return;
        }
        log.next = Some(now + ARP_LOG_INTERVAL);
        let iface = self
            .link_names
            .get(port)
            .cloned()
            .unwrap_or_else(|| format!("port {port}"));
        let reason = STACK_DROPS.name(reason).unwrap_or_default();
        tracing::warn!(
            iface,
            sender = %ip,
            mac = %mac,
            reason,
            refused = log.refused,
            "ARP claim not learned (counted under drop reason {}; {} refused since the last such line, which comes at              most every {} s): a host on this link claims an address it may not own here",
            reason,
            log.refused,
            ARP_LOG_INTERVAL.as_secs()
        );
        log.refused = 0;
    }
}
