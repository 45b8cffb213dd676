//! Tests of session sync on a fake clock: the wire format, authentication and replay protection, and whole
//! nodes exchanging datagrams over a simulated link that drops, delays and reorders them deterministically.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use xlb_l4::conn::{Conn, ConnState, FinSeen, Forwarding, Proto, ProxyPhase};
use xlb_stack::wire::EthernetAddress;

use super::auth::MAC_LEN;
use super::record::{KEY_LEN, MAX_REMAINING_MS, RECORD_LEN};
use super::wire::{BulkEndRepr, Header, ACK_MESSAGE_LEN, FLAG_RETRANSMIT, HEADER_LEN, MAX_CONNS, MAX_DELETES};
use super::*;

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

fn key() -> AuthKey {
    AuthKey::from_bytes(b"0123456789abcdef0123456789abcdef-xlb").unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn addr(node: u32) -> SocketAddr {
    SocketAddr::from(([10, 255, 0, node as u8], 8848))
}

/// splitmix64: a small, seeded, deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

/// A valid record for connection number `k` (distinct keys for distinct `k`), with some variety.
fn record(k: u32, variant: u64) -> ConnRecord {
    let client = SocketAddrV4::new(
        Ipv4Addr::new(10, (k / 62_500) as u8, (k / 250 % 250) as u8, (k % 250 + 1) as u8),
        1024 + (k % 60_000) as u16,
    );
    let udp = matches!(k % 5, 0);
    let dr = matches!(k % 3, 0);
    let state = if udp {
        ConnState::Udp
    } else {
        [
            ConnState::SynRecv,
            ConnState::Established,
            ConnState::FinWait,
            ConnState::TimeWait,
            ConnState::Close,
        ][(variant % 5) as usize]
    };
    ConnRecord {
        proto: if udp { Proto::Udp } else { Proto::Tcp },
        forwarding: if dr { Forwarding::Dr } else { Forwarding::Fullnat },
        client,
        vip: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), if udp { 53 } else { 80 }),
        local: if dr {
            client
        } else {
            SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 10), 2000 + (k % 60_000) as u16)
        },
        backend: SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 2 + (k % 7) as u8), 8080),
        state,
        fins: FinSeen {
            client: !udp && variant & 8 != 0,
            server: !udp && variant & 16 != 0,
        },
        ingress_port: (k % 2) as u8,
        client_mac: EthernetAddress([2, 0, 0, 0, (k >> 8) as u8, k as u8]),
        client_packets: (variant % 100_000) as u32,
        remaining_ms: (variant % 900_000) as u32,
        seq_delta: (!udp && !dr && variant & 32 != 0).then_some(variant as u32 ^ 0x9e37_79b9),
    }
}

fn config(node: u32, epoch: u32) -> SyncConfig {
    SyncConfig::new(node, epoch)
}

fn decode(bytes: &[u8]) -> SyncRepr {
    let msg = SyncMessage::new_checked(bytes).expect("framed");
    assert!(msg.verify(&key()), "signed");
    SyncRepr::parse(&msg).expect("valid")
}

fn emit(repr: &SyncRepr) -> Vec<u8> {
    let mut buf = vec![0; repr.buffer_len()];
    let n = repr.emit(&mut buf, &key());
    assert_eq!(n, buf.len());
    buf
}

fn header(node: u32, epoch: u32, seq: u64, rseq: u64, base: u64) -> Header {
    Header {
        flags: 0,
        node_id: node,
        epoch,
        seq,
        rseq,
        base,
    }
}

fn conns_msg(node: u32, epoch: u32, seq: u64, rseq: u64, base: u64, records: &[ConnRecord]) -> Vec<u8> {
    emit(&SyncRepr {
        header: header(node, epoch, seq, rseq, base),
        body: Body::Conns(records.to_vec()),
    })
}

fn drain(rx: &mut SyncReceiver) -> Vec<SyncAction> {
    std::iter::from_fn(|| rx.poll_action()).collect()
}

fn upserts(actions: &[SyncAction]) -> Vec<ConnRecord> {
    actions
        .iter()
        .filter_map(|a| match a {
            SyncAction::Upsert(r) => Some(*r),
            _ => None,
        })
        .collect()
}

fn acks(actions: &[SyncAction]) -> Vec<AckRepr> {
    actions
        .iter()
        .filter_map(|a| match a {
            SyncAction::SendAck { bytes, .. } => match decode(bytes).body {
                Body::Ack(ack) => Some(ack),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Everything the sender wants to send at `now`.
fn transmit_all(tx: &mut SyncSender, now: Instant) -> Vec<Vec<u8>> {
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    std::iter::from_fn(|| tx.poll_transmit(now, &mut buf).map(|n| buf[..n].to_vec())).collect()
}

// ---------------------------------------------------------------------------------------------------------
// Wire format
// ---------------------------------------------------------------------------------------------------------

#[test]
fn every_message_type_round_trips() {
    let me = PeerId { node_id: 7, epoch: 99 };
    let mut sack = [0u64; 4];
    sack[0] = 0b1010;
    sack[3] = 1 << 63;
    let bodies = [
        (
            Body::Conns((0..MAX_CONNS as u32).map(|k| record(k, u64::from(k) * 7919)).collect()),
            3,
            2,
        ),
        (
            Body::Deletes((0..MAX_DELETES as u32).map(|k| record(k, 0).key()).collect()),
            4,
            4,
        ),
        (
            Body::Ack(AckRepr {
                acked: me,
                cumulative: 1 << 40,
                sack,
            }),
            0,
            0,
        ),
        (Body::BulkRequest(0xdead_beef), 5, 5),
        (
            Body::BulkEnd(BulkEndRepr {
                requester: me,
                request: 3,
            }),
            6,
            1,
        ),
        (Body::Heartbeat, 6, 7),
    ];
    for (i, (body, rseq, base)) in bodies.into_iter().enumerate() {
        let flags = if body.msg_type().is_reliable() {
            FLAG_RETRANSMIT
        } else {
            0
        };
        let repr = SyncRepr {
            header: Header {
                flags,
                node_id: 0x0102_0304,
                epoch: 0xa0b0_c0d0,
                seq: 1000 + i as u64,
                rseq,
                base,
            },
            body,
        };
        let bytes = emit(&repr);
        assert!(bytes.len() <= MAX_MESSAGE_LEN);
        assert_eq!(&bytes[..4], b"XLBS");
        assert_eq!(bytes[5], repr.body.msg_type() as u8);
        let view = SyncMessage::new_checked(&bytes[..]).unwrap();
        assert_eq!(view.node_id(), 0x0102_0304);
        assert_eq!(view.seq(), 1000 + i as u64);
        assert_eq!(view.mac().len(), MAC_LEN);
        assert_eq!(decode(&bytes), repr, "{:?}", repr.body.msg_type());
    }
    assert_eq!(ACK_MESSAGE_LEN, HEADER_LEN + 48 + MAC_LEN);
}

#[test]
fn header_and_body_fields_are_validated() {
    let good = SyncRepr {
        header: header(1, 1, 1, 1, 1),
        body: Body::Conns(vec![record(1, 1)]),
    };
    type Mutation = Box<dyn Fn(&mut [u8])>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("type", Box::new(|b| b[5] = 9)),
        ("flags", Box::new(|b| b[6] = 2)),
        ("reserved", Box::new(|b| b[7] = 1)),
        ("node_id", Box::new(|b| b[8..12].fill(0))),
        ("epoch", Box::new(|b| b[12..16].fill(0))),
        ("seq", Box::new(|b| b[16..24].fill(0))),
        ("rseq", Box::new(|b| b[24..32].fill(0))),
        ("base above rseq", Box::new(|b| b[39] = 2)),
        ("count", Box::new(|b| b[41] = 2)),
        ("record proto", Box::new(|b| b[HEADER_LEN] = 1)),
        ("record forwarding", Box::new(|b| b[HEADER_LEN + 1] = 0)),
        ("record state", Box::new(|b| b[HEADER_LEN + 2] = 7)),
        ("record flags", Box::new(|b| b[HEADER_LEN + 3] = 8)),
        (
            "record seq delta without its flag",
            Box::new(|b| b[HEADER_LEN + 47] = 1),
        ),
        (
            "record client ip",
            Box::new(|b| b[HEADER_LEN + 4..HEADER_LEN + 8].fill(0)),
        ),
        (
            "record vip port",
            Box::new(|b| b[HEADER_LEN + 14..HEADER_LEN + 16].fill(0)),
        ),
        ("record backend ip", Box::new(|b| b[HEADER_LEN + 22] = 224)),
        ("record mac", Box::new(|b| b[HEADER_LEN + 28] = 1)),
        ("record reserved", Box::new(|b| b[HEADER_LEN + 35] = 1)),
        ("record timeout", Box::new(|b| b[HEADER_LEN + 36] = 0xff)),
    ];
    for (name, mutate) in cases {
        let mut bytes = emit(&good);
        mutate(&mut bytes);
        let mut msg = SyncMessage::new_unchecked(&mut bytes[..]);
        msg.sign(&key());
        let msg = SyncMessage::new_checked(&bytes[..]).unwrap();
        assert!(msg.verify(&key()));
        assert!(SyncRepr::parse(&msg).is_err(), "{name} accepted");
    }
    // Heartbeats and acks constrain rseq / base differently.
    let hb = SyncRepr {
        header: header(1, 1, 1, 0, 1),
        body: Body::Heartbeat,
    };
    assert_eq!(hb.clone(), decode(&emit(&hb)), "nothing sent yet: base = rseq + 1");
    let mut bad_hb = hb;
    bad_hb.header.base = 2;
    let b = emit(&bad_hb);
    assert_eq!(
        SyncRepr::parse(&SyncMessage::new_checked(&b[..]).unwrap()),
        Err(WireError::BadField("base"))
    );
    let ack = SyncRepr {
        header: header(1, 1, 1, 5, 0),
        body: Body::Ack(AckRepr {
            acked: PeerId { node_id: 2, epoch: 2 },
            cumulative: 0,
            sack: [0; 4],
        }),
    };
    let b = emit(&ack);
    assert_eq!(
        SyncRepr::parse(&SyncMessage::new_checked(&b[..]).unwrap()),
        Err(WireError::BadField("rseq"))
    );
}

#[test]
fn records_convert_to_and_from_connections() {
    let conn = Conn {
        proto: Proto::Tcp,
        forwarding: Forwarding::Fullnat,
        client: "198.18.0.1:40000".parse().unwrap(),
        vip: "198.18.0.100:80".parse().unwrap(),
        local: "198.19.0.10:5000".parse().unwrap(),
        backend: "198.19.0.2:8080".parse().unwrap(),
        listener: 3,
        server: 4,
        state: ConnState::FinWait,
        fins: FinSeen {
            client: true,
            server: false,
        },
        client_port: 1,
        client_mac: EthernetAddress([2, 0, 0, 0, 0, 9]),
        client_packets: 17,
        synced: true,
        proxy: ProxyPhase::Translating,
        seq_delta: 0xdead_beef,
        answered: true,
    };
    let r = ConnRecord::from_conn(&conn, ms(119_900));
    assert_eq!(r.remaining_ms, 119_900);
    let mut b = [0u8; RECORD_LEN];
    r.emit(&mut b);
    let back = ConnRecord::parse(&b).unwrap();
    assert_eq!(back, r);
    let parts = back.to_conn_parts();
    assert_eq!(
        parts.listener,
        ListenerId {
            proto: Proto::Tcp,
            vip: conn.vip
        }
    );
    assert_eq!(parts.backend, conn.backend);
    assert_eq!(parts.remaining, ms(119_900));
    // The importer's slots differ from the exporter's; everything else is kept.
    let imported = parts.into_conn(0, 1);
    assert_eq!(
        imported,
        Conn {
            listener: 0,
            server: 1,
            synced: false,
            ..conn
        }
    );
    assert_eq!(r.key().flow_key(), conn.client_key());
    assert_eq!(ConnKey::from_flow_key(&conn.client_key()), ConnKey::of(&conn));
    let mut kb = [0u8; KEY_LEN];
    r.key().emit(&mut kb);
    assert_eq!(ConnKey::parse(&kb), Ok(r.key()));
    // Timeouts beyond 30 days are clamped, not wrapped.
    let long = ConnRecord::from_conn(&conn, Duration::from_secs(u64::MAX / 4));
    assert_eq!(long.remaining_ms, MAX_REMAINING_MS);
    // Inconsistent records are refused before they reach the wire.
    let dr_with_local = ConnRecord {
        forwarding: Forwarding::Dr,
        seq_delta: None,
        ..r
    };
    let dr_with_delta = ConnRecord {
        forwarding: Forwarding::Dr,
        local: r.client,
        ..r
    };
    assert_eq!(dr_with_delta.validate(), Err(RecordError { field: "flags" }));
    assert_eq!(dr_with_local.validate(), Err(RecordError { field: "local" }));
    let udp_with_tcp_state = ConnRecord { proto: Proto::Udp, ..r };
    assert_eq!(udp_with_tcp_state.validate(), Err(RecordError { field: "state" }));
    let udp_with_fins = ConnRecord {
        proto: Proto::Udp,
        state: ConnState::Udp,
        ..r
    };
    assert_eq!(udp_with_fins.validate(), Err(RecordError { field: "flags" }));
}

#[test]
fn batching_fills_messages_to_the_size_limit() {
    let t0 = Instant::now();
    let mut tx = SyncSender::new(config(1, 1), key(), t0).unwrap();
    for k in 0..1000 {
        tx.queue_update(record(k, 1)).unwrap();
    }
    for k in 1000..2000 {
        tx.queue_delete(record(k, 1).key()).unwrap();
    }
    let sent = transmit_all(&mut tx, t0);
    let (mut records, mut keys) = (0, 0);
    let mut full = 0;
    for bytes in &sent[1..] {
        assert!(bytes.len() <= MAX_MESSAGE_LEN);
        match decode(bytes).body {
            Body::Conns(r) => {
                records += r.len();
                if r.len() == MAX_CONNS {
                    full += 1;
                    assert_eq!(bytes.len(), HEADER_LEN + MAX_CONNS * RECORD_LEN + MAC_LEN);
                    assert!(bytes.len() + RECORD_LEN > MAX_MESSAGE_LEN, "room for one more record");
                }
            }
            Body::Deletes(k) => {
                keys += k.len();
                if k.len() == MAX_DELETES {
                    full += 1;
                    assert!(bytes.len() + KEY_LEN > MAX_MESSAGE_LEN, "room for one more key");
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(matches!(decode(&sent[0]).body, Body::Heartbeat));
    assert_eq!((records, keys), (1000, 1000));
    // 1000 / 27 → 38 messages, 1000 / 101 → 10: all but the two tails are full.
    assert_eq!(sent.len() - 1, 38 + 10);
    assert_eq!(full, 37 + 9);
    assert_eq!(tx.counters().entries_sent, 2000);
    // No peer known: nothing is kept for retransmission.
    assert!(tx.is_idle());
}

// ---------------------------------------------------------------------------------------------------------
// Authentication, replay, robustness
// ---------------------------------------------------------------------------------------------------------

#[test]
fn wrong_key_flipped_bits_and_truncation_are_rejected() {
    let t0 = Instant::now();
    let msg = conns_msg(2, 5, 1, 1, 1, &[record(1, 1), record(2, 2)]);
    let mut rx = SyncReceiver::new(config(1, 1), key()).unwrap();

    let other = AuthKey::from_bytes(&[0x55; 32]).unwrap();
    let mut rx_other = SyncReceiver::new(config(1, 1), other).unwrap();
    assert_eq!(rx_other.handle_message(t0, addr(2), &msg), Err(RecvError::Forged));
    assert_eq!(rx_other.counters().forged, 1);
    assert!(rx_other.poll_action().is_none());

    // Every single-bit flip is refused: framing bytes (magic, version, body length) as malformed, every
    // other bit, the trailer's included, by the HMAC.
    let mut forged = 0;
    for bit in 0..msg.len() * 8 {
        let mut m = msg.clone();
        m[bit / 8] ^= 1 << (bit % 8);
        let framing = matches!(bit / 8, 0..=4 | 42..=43);
        match rx.handle_message(t0, addr(2), &m) {
            Err(RecvError::Malformed(_)) => assert!(framing, "bit {bit}"),
            Err(RecvError::Forged) => {
                assert!(!framing, "bit {bit}");
                forged += 1;
            }
            other => panic!("bit {bit}: {other:?}"),
        }
    }
    assert_eq!(rx.counters().forged, forged);
    assert!(rx.poll_action().is_none());

    for len in 0..msg.len() {
        assert!(matches!(
            rx.handle_message(t0, addr(2), &msg[..len]),
            Err(RecvError::Malformed(_))
        ));
    }
    let mut longer = msg.clone();
    longer.push(0);
    assert!(matches!(
        rx.handle_message(t0, addr(2), &longer),
        Err(RecvError::Malformed(WireError::BadLength { .. }))
    ));
    assert!(matches!(
        rx.handle_message(t0, addr(2), &vec![0; 65_000]),
        Err(RecvError::Malformed(WireError::TooLong { len: 65_000 }))
    ));
    assert!(rx.poll_action().is_none());

    // None of that poisoned the replay window: the genuine message is still accepted.
    assert_eq!(rx.handle_message(t0, addr(2), &msg), Ok(()));
    assert_eq!(upserts(&drain(&mut rx)), vec![record(1, 1), record(2, 2)]);
}

#[test]
fn replayed_message_is_dropped_and_changes_nothing() {
    let t0 = Instant::now();
    let mut rx = SyncReceiver::new(config(1, 1), key()).unwrap();
    let m1 = conns_msg(2, 5, 1, 1, 1, &[record(1, 1)]);
    let del = emit(&SyncRepr {
        header: header(2, 5, 2, 2, 1),
        body: Body::Deletes(vec![record(1, 1).key()]),
    });
    rx.handle_message(t0, addr(2), &m1).unwrap();
    rx.handle_message(t0, addr(2), &del).unwrap();
    drain(&mut rx);
    let before = *rx.counters();
    // An attacker replays the captured upsert after the delete: it must not resurrect the connection.
    assert_eq!(rx.handle_message(t0 + ms(5), addr(66), &m1), Err(RecvError::Replayed));
    assert_eq!(rx.handle_message(t0 + ms(6), addr(66), &del), Err(RecvError::Replayed));
    assert!(rx.poll_action().is_none(), "no action, no ack");
    let after = *rx.counters();
    assert_eq!(after.replayed, 2);
    assert_eq!(
        SyncCounters {
            replayed: 0,
            received: before.received,
            ..after
        },
        before
    );

    // A replayed ACK is dropped too (acks have their own packet numbers).
    let ack = emit(&SyncRepr {
        header: header(2, 5, 1, 0, 0),
        body: Body::Ack(AckRepr {
            acked: PeerId { node_id: 1, epoch: 1 },
            cumulative: 0,
            sack: [0; 4],
        }),
    });
    rx.handle_message(t0, addr(2), &ack).unwrap();
    assert!(matches!(drain(&mut rx)[..], [SyncAction::PeerAck { .. }]));
    assert_eq!(rx.handle_message(t0, addr(2), &ack), Err(RecvError::Replayed));

    // Packet numbers far behind the newest are refused even if never seen.
    let newest = conns_msg(2, 5, 5000, 3, 1, &[record(3, 1)]);
    rx.handle_message(t0, addr(2), &newest).unwrap();
    let ancient = conns_msg(2, 5, 5000 - receiver::REPLAY_WINDOW, 4, 1, &[record(4, 1)]);
    assert_eq!(rx.handle_message(t0, addr(2), &ancient), Err(RecvError::Replayed));
}

#[test]
fn retransmission_is_a_duplicate_not_a_replay_and_is_acked_again() {
    let t0 = Instant::now();
    let mut tx = SyncSender::new(config(2, 5), key(), t0).unwrap();
    let mut rx = SyncReceiver::new(config(1, 1), key()).unwrap();
    tx.handle_heartbeat(t0, PeerId { node_id: 1, epoch: 1 });
    tx.queue_update(record(1, 1)).unwrap();
    let first = transmit_all(&mut tx, t0);
    assert_eq!(first.len(), 2, "heartbeat + conns");
    rx.handle_message(t0, addr(2), &first[1]).unwrap();
    assert_eq!(upserts(&drain(&mut rx)).len(), 1);
    // The ack was lost: the sender resends after the RTO with a new packet number.
    let again = transmit_all(&mut tx, t0 + ms(200));
    assert_eq!(again.len(), 1);
    let repr = decode(&again[0]);
    assert_eq!(repr.header.flags, FLAG_RETRANSMIT);
    assert_eq!(repr.header.rseq, 1);
    assert_ne!(repr.header.seq, decode(&first[1]).header.seq);
    assert_eq!(rx.handle_message(t0 + ms(200), addr(2), &again[0]), Ok(()));
    let actions = drain(&mut rx);
    assert!(upserts(&actions).is_empty(), "not applied twice");
    assert_eq!(acks(&actions)[0].cumulative, 1);
    assert_eq!(rx.counters().duplicates, 1);
    assert_eq!(rx.counters().replayed, 0);
    assert_eq!(tx.counters().retransmits, 1);
}

#[test]
fn random_and_mutated_input_never_panics() {
    let t0 = Instant::now();
    let mut rng = Rng(0x5eed);
    let mut rx = SyncReceiver::new(config(1, 1), key()).unwrap();
    // Valid messages of every type to mutate.
    let me = PeerId { node_id: 1, epoch: 1 };
    let seeds = [
        conns_msg(2, 5, 1, 1, 1, &[record(1, 1), record(2, 2), record(3, 3)]),
        emit(&SyncRepr {
            header: header(2, 5, 2, 2, 1),
            body: Body::Deletes(vec![record(1, 1).key(), record(9, 1).key()]),
        }),
        emit(&SyncRepr {
            header: header(2, 5, 3, 0, 0),
            body: Body::Ack(AckRepr {
                acked: me,
                cumulative: 0,
                sack: [0; 4],
            }),
        }),
        emit(&SyncRepr {
            header: header(2, 5, 4, 3, 1),
            body: Body::BulkRequest(1),
        }),
        emit(&SyncRepr {
            header: header(2, 5, 5, 4, 1),
            body: Body::BulkEnd(BulkEndRepr {
                requester: me,
                request: 1,
            }),
        }),
        emit(&SyncRepr {
            header: header(2, 5, 6, 4, 1),
            body: Body::Heartbeat,
        }),
    ];
    let mut buf = vec![0u8; 1600];
    let mut ok = 0u64;
    let n: u64 = 100_000;
    for i in 0..n {
        let len = match i % 4 {
            // Random bytes of random length.
            0 => {
                let len = rng.below(1600) as usize;
                rng.fill(&mut buf[..len]);
                len
            }
            // Random bytes with valid framing: reaches the HMAC check.
            1 => {
                let body = rng.below(MAX_MESSAGE_LEN as u64 - 76) as usize;
                let len = HEADER_LEN + body + MAC_LEN;
                rng.fill(&mut buf[..len]);
                buf[..4].copy_from_slice(b"XLBS");
                buf[4] = super::wire::VERSION;
                buf[42..44].copy_from_slice(&(body as u16).to_be_bytes());
                len
            }
            // A valid message with a few bytes changed and signed again: reaches the parser and the state
            // machine.
            _ => {
                let seed = &seeds[rng.below(seeds.len() as u64) as usize];
                buf[..seed.len()].copy_from_slice(seed);
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(seed.len() as u64 - MAC_LEN as u64) as usize;
                    buf[at] = rng.next() as u8;
                }
                let len = seed.len();
                // Give it a fresh packet number most of the time so replay protection doesn't hide the rest.
                if rng.below(4) != 0 {
                    buf[16..24].copy_from_slice(&(i + 1).to_be_bytes());
                }
                SyncMessage::new_unchecked(&mut buf[..len]).sign(&key());
                seed.len()
            }
        };
        let bytes = &buf[..len];
        if let Ok(msg) = SyncMessage::new_checked(bytes) {
            let _ = SyncRepr::parse(&msg);
        }
        if len >= RECORD_LEN {
            let _ = ConnRecord::parse(&bytes[..RECORD_LEN]);
            let _ = ConnKey::parse(&bytes[..KEY_LEN]);
        }
        let result = rx.handle_message(t0 + ms(i), addr(2), bytes);
        if i % 4 < 2 {
            assert!(result.is_err(), "iteration {i}: random bytes accepted");
        }
        ok += u64::from(result.is_ok());
        while rx.poll_action().is_some() {}
    }
    let c = rx.counters();
    assert_eq!(c.received, n);
    assert_eq!(
        c.malformed + c.forged + c.replayed + c.looped + c.too_many_nodes + ok,
        n,
        "every datagram is accounted for: {c:?}"
    );
    assert!(c.forged >= n / 4, "framed random bytes fail the HMAC");
    assert!(ok > 0 && c.malformed > n / 4, "mutations reach both outcomes");
}

// ---------------------------------------------------------------------------------------------------------
// Receiver ordering, gaps and filtering
// ---------------------------------------------------------------------------------------------------------

#[test]
fn reordered_messages_are_delivered_in_order_and_sacked() {
    let t0 = Instant::now();
    let mut rx = SyncReceiver::new(config(1, 1), key()).unwrap();
    let m = |seq, rseq, k| conns_msg(2, 5, seq, rseq, 1, &[record(k, 1)]);
    // rseq 3 and 2 arrive before 1.
    rx.handle_message(t0, addr(2), &m(3, 3, 3)).unwrap();
    let a = drain(&mut rx);
    assert!(upserts(&a).is_empty());
    let ack = acks(&a)[0];
    assert_eq!(ack.cumulative, 0);
    assert!(ack.covers(3) && !ack.covers(1) && !ack.covers(2));
    rx.handle_message(t0, addr(2), &m(2, 2, 2)).unwrap();
    drain(&mut rx);
    rx.handle_message(t0, addr(2), &m(1, 1, 1)).unwrap();
    let a = drain(&mut rx);
    assert_eq!(upserts(&a), vec![record(1, 1), record(2, 1), record(3, 1)]);
    assert_eq!(acks(&a)[0].cumulative, 3);
    // An ack goes back to where the message came from.
    assert!(a
        .iter()
        .any(|x| matches!(x, SyncAction::SendAck { to, .. } if *to == addr(2))));
    // Beyond the window: dropped (the sender will resend), but still acked with our position.
    rx.handle_message(t0, addr(2), &m(4, 4 + 256, 9)).unwrap();
    let a = drain(&mut rx);
    assert!(upserts(&a).is_empty());
    assert_eq!(rx.counters().out_of_window, 1);
    assert_eq!(acks(&a)[0].cumulative, 3);
}

#[test]
fn base_beyond_our_position_is_reported_as_a_gap() {
    let t0 = Instant::now();
    let mut rx = SyncReceiver::new(config(1, 1), key()).unwrap();
    rx.handle_message(t0, addr(2), &conns_msg(2, 5, 1, 1, 1, &[record(1, 1)]))
        .unwrap();
    rx.handle_message(t0, addr(2), &conns_msg(2, 5, 2, 3, 1, &[record(3, 1)]))
        .unwrap();
    drain(&mut rx);
    // The sender gave up on 2..=4 (it forgot us); 3 had arrived, 2 and 4 are lost.
    rx.handle_message(t0, addr(2), &conns_msg(2, 5, 3, 6, 5, &[record(6, 1)]))
        .unwrap();
    let a = drain(&mut rx);
    assert_eq!(upserts(&a), vec![record(3, 1)]);
    let peer = PeerId { node_id: 2, epoch: 5 };
    assert!(a.contains(&SyncAction::Gap { from: peer, lost: 2 }));
    let ack = acks(&a)[0];
    assert_eq!(ack.cumulative, 4);
    assert!(ack.covers(6) && !ack.covers(5));
    assert_eq!(rx.counters().lost, 2);
    // A heartbeat moving base also closes the gap.
    let hb = emit(&SyncRepr {
        header: header(2, 5, 4, 6, 6),
        body: Body::Heartbeat,
    });
    rx.handle_message(t0, addr(2), &hb).unwrap();
    let a = drain(&mut rx);
    assert_eq!(upserts(&a), vec![record(6, 1)]);
    assert!(a.contains(&SyncAction::Gap { from: peer, lost: 1 }));
    assert_eq!(acks(&a)[0].cumulative, 6);
}

#[test]
fn own_foreign_and_excess_messages_are_filtered() {
    let t0 = Instant::now();
    let mut cfg = config(1, 1);
    cfg.max_nodes = 1;
    let mut rx = SyncReceiver::new(cfg, key()).unwrap();
    assert_eq!(
        rx.handle_message(t0, addr(1), &conns_msg(1, 1, 1, 1, 1, &[record(1, 1)])),
        Err(RecvError::Looped)
    );
    let foreign_ack = emit(&SyncRepr {
        header: header(2, 5, 1, 0, 0),
        body: Body::Ack(AckRepr {
            acked: PeerId { node_id: 3, epoch: 3 },
            cumulative: 0,
            sack: [0; 4],
        }),
    });
    rx.handle_message(t0, addr(2), &foreign_ack).unwrap();
    assert!(rx.poll_action().is_none());
    assert_eq!(rx.counters().foreign_acks, 1);
    assert_eq!(
        rx.handle_message(t0, addr(3), &conns_msg(3, 1, 1, 1, 1, &[record(1, 1)])),
        Err(RecvError::TooManyNodes)
    );
    assert_eq!(rx.counters().looped, 1);
    assert_eq!(rx.counters().too_many_nodes, 1);
}

#[test]
fn bulk_end_completes_only_our_current_request_without_gaps() {
    let t0 = Instant::now();
    let mut rx = SyncReceiver::new(config(1, 1), key()).unwrap();
    let me = rx.me();
    let peer = PeerId { node_id: 2, epoch: 5 };
    let end = |seq, rseq, base, requester, request| {
        emit(&SyncRepr {
            header: header(2, 5, seq, rseq, base),
            body: Body::BulkEnd(BulkEndRepr { requester, request }),
        })
    };
    let request = rx.begin_resync();
    rx.handle_message(t0, addr(2), &conns_msg(2, 5, 1, 1, 1, &[record(1, 1)]))
        .unwrap();
    // For another node, or for an older request of ours: ignored.
    let other = PeerId { node_id: 3, epoch: 3 };
    rx.handle_message(t0, addr(2), &end(2, 2, 1, other, request)).unwrap();
    rx.handle_message(t0, addr(2), &end(3, 3, 1, me, request.wrapping_sub(1)))
        .unwrap();
    assert!(!drain(&mut rx)
        .iter()
        .any(|a| matches!(a, SyncAction::BulkComplete { .. })));
    assert_eq!(rx.resync_state(), ResyncState::Pending { request });
    // The answer lost rseq 4 for good (base moved past it): its BULK_END does not complete the resync.
    rx.handle_message(t0, addr(2), &end(4, 5, 5, me, request)).unwrap();
    let a = drain(&mut rx);
    assert!(a.contains(&SyncAction::Gap { from: peer, lost: 1 }));
    assert!(!a.iter().any(|a| matches!(a, SyncAction::BulkComplete { .. })));
    assert!(!rx.resynced());
    // Asked again, answered in full.
    let again = rx.begin_resync();
    assert_ne!(again, request);
    rx.handle_message(t0, addr(2), &conns_msg(2, 5, 5, 6, 5, &[record(1, 2)]))
        .unwrap();
    rx.handle_message(t0, addr(2), &end(6, 7, 5, me, again)).unwrap();
    let a = drain(&mut rx);
    assert_eq!(upserts(&a), vec![record(1, 2)]);
    assert!(a.contains(&SyncAction::BulkComplete { from: peer }));
    assert!(rx.resynced());
}

// ---------------------------------------------------------------------------------------------------------
// Sender: coalescing, window, RTO, peers
// ---------------------------------------------------------------------------------------------------------

#[test]
fn queued_changes_of_one_connection_coalesce() {
    let t0 = Instant::now();
    let mut tx = SyncSender::new(config(1, 1), key(), t0).unwrap();
    let old = record(1, 1);
    let new = ConnRecord {
        client_packets: 99,
        ..old
    };
    tx.queue_update(old).unwrap();
    tx.queue_update(record(2, 1)).unwrap();
    tx.queue_update(new).unwrap();
    tx.queue_update(record(3, 1)).unwrap();
    tx.queue_delete(record(3, 1).key()).unwrap();
    tx.queue_delete(record(3, 1).key()).unwrap();
    tx.queue_delete(record(4, 1).key()).unwrap();
    tx.queue_update(record(4, 2)).unwrap();
    assert_eq!(tx.pending(), 4);
    assert_eq!(tx.counters().coalesced, 4);
    let bodies: Vec<Body> = transmit_all(&mut tx, t0)[1..].iter().map(|b| decode(b).body).collect();
    assert_eq!(
        bodies,
        vec![
            // The replaced upsert keeps its place; changes of distinct connections commute, so all upserts
            // share one message.
            Body::Conns(vec![new, record(2, 1), record(4, 2)]),
            Body::Deletes(vec![record(3, 1).key()]),
        ]
    );
    // Invalid changes are refused up front.
    let bad = ConnRecord {
        backend: "0.0.0.0:80".parse().unwrap(),
        ..old
    };
    assert_eq!(
        tx.queue_update(bad),
        Err(QueueError::Invalid(RecordError { field: "backend" }))
    );
    assert_eq!(tx.counters().invalid, 1);
}

#[test]
fn full_window_applies_backpressure_until_the_silent_peer_is_forgotten() {
    let t0 = Instant::now();
    let mut cfg = config(1, 1);
    cfg.max_pending = 100;
    let mut tx = SyncSender::new(cfg, key(), t0).unwrap();
    let peer = PeerId { node_id: 2, epoch: 2 };
    tx.handle_heartbeat(t0, peer);
    let mut k = 0;
    let mut sent = 0;
    // The peer never acks: 256 messages fill the window.
    while tx.in_flight() < 256 {
        for _ in 0..MAX_CONNS {
            tx.queue_update(record(k, 1)).unwrap();
            k += 1;
        }
        sent += transmit_all(&mut tx, t0).len();
    }
    assert_eq!(sent, 1 + 256);
    // Further changes queue up to max_pending, then are refused.
    for _ in 0..100 {
        tx.queue_update(record(k, 1)).unwrap();
        k += 1;
    }
    assert_eq!(tx.queue_update(record(k, 1)), Err(QueueError::Full));
    assert_eq!(tx.queue_bulk_end(peer, 1), Err(QueueError::Full));
    assert_eq!(tx.counters().queue_full, 2);
    assert!(
        transmit_all(&mut tx, t0 + ms(100)).is_empty(),
        "window full, nothing due"
    );
    // RTO: the whole window is resent once, no new message.
    let resent = transmit_all(&mut tx, t0 + ms(200));
    assert_eq!(resent.len(), 256);
    assert!(resent.iter().all(|b| decode(b).header.flags == FLAG_RETRANSMIT));
    // The peer stays silent past peer_timeout: forgotten, the window drains, the queue moves.
    let later = transmit_all(&mut tx, t0 + ms(3_001));
    assert_eq!(tx.counters().peers_forgotten, 1);
    assert_eq!(tx.peers().count(), 0);
    let conns: usize = later
        .iter()
        .filter_map(|b| match decode(b).body {
            Body::Conns(r) => Some(r.len()),
            _ => None,
        })
        .sum();
    assert_eq!(conns, 100);
    assert!(tx.is_idle());
}

#[test]
fn retransmission_backs_off_to_the_maximum_and_stops_when_acked() {
    let t0 = Instant::now();
    let mut tx = SyncSender::new(config(1, 1), key(), t0).unwrap();
    let peer = PeerId { node_id: 2, epoch: 2 };
    tx.handle_heartbeat(t0, peer);
    tx.queue_update(record(1, 1)).unwrap();
    let mut times = vec![];
    let mut now = t0;
    while now < t0 + ms(9_000) {
        // The peer is alive (heartbeats) but does not ack.
        tx.handle_heartbeat(now, peer);
        for b in transmit_all(&mut tx, now) {
            if decode(&b).body.msg_type() == MessageType::Conns {
                times.push((now - t0).as_millis() as u64);
            }
        }
        now += ms(10);
    }
    assert_eq!(times, vec![0, 200, 600, 1400, 3000, 5000, 7000]);
    let ack = AckRepr {
        acked: tx.me(),
        cumulative: 1,
        sack: [0; 4],
    };
    tx.handle_ack(now, peer, &ack);
    assert!(tx.is_idle());
    assert_eq!(tx.poll_timeout(), t0 + ms(9_000), "only the next heartbeat is due");
    // An ack for another incarnation of us, or for messages never sent, is ignored.
    tx.handle_ack(
        now,
        peer,
        &AckRepr {
            acked: PeerId { node_id: 1, epoch: 7 },
            ..ack
        },
    );
    tx.handle_ack(now, peer, &AckRepr { cumulative: 50, ..ack });
    assert_eq!(tx.counters().bad_acks, 2);
}

#[test]
fn bulk_request_waits_for_a_peer() {
    let t0 = Instant::now();
    let mut tx = SyncSender::new(config(1, 1), key(), t0).unwrap();
    let mut rx = SyncReceiver::new(config(1, 1), key()).unwrap();
    assert!(!rx.resynced());
    let request = rx.begin_resync();
    tx.queue_bulk_request(request).unwrap();
    tx.queue_update(record(1, 1)).unwrap();
    let first = transmit_all(&mut tx, t0);
    let types: Vec<_> = first.iter().map(|b| decode(b).body.msg_type()).collect();
    assert_eq!(
        types,
        vec![MessageType::Heartbeat, MessageType::Conns],
        "changes do not wait"
    );
    tx.handle_heartbeat(t0 + ms(50), PeerId { node_id: 2, epoch: 2 });
    let next = transmit_all(&mut tx, t0 + ms(50));
    assert_eq!(next.len(), 1);
    assert_eq!(decode(&next[0]).body, Body::BulkRequest(request));
    assert_eq!(tx.in_flight(), 1, "kept until the peer acks");
}

// ---------------------------------------------------------------------------------------------------------
// Whole nodes over a simulated lossy link
// ---------------------------------------------------------------------------------------------------------

struct Node {
    addr: SocketAddr,
    tx: SyncSender,
    rx: SyncReceiver,
    /// Connections learned from peers.
    table: HashMap<ConnKey, ConnRecord>,
    /// This node's own connections (answered in bulk).
    own: HashMap<ConnKey, ConnRecord>,
    /// Size of `table` when the bulk resync completed.
    completed: Option<usize>,
    gaps: u64,
}

impl Node {
    fn new(node_id: u32, epoch: u32, cfg: impl Fn(&mut SyncConfig), now: Instant) -> Node {
        let mut c = config(node_id, epoch);
        cfg(&mut c);
        Node {
            addr: addr(node_id),
            tx: SyncSender::new(c.clone(), key(), now).unwrap(),
            rx: SyncReceiver::new(c, key()).unwrap(),
            table: HashMap::new(),
            own: HashMap::new(),
            completed: None,
            gaps: 0,
        }
    }
}

struct Datagram {
    at: Instant,
    to: usize,
    from: SocketAddr,
    bytes: Vec<u8>,
}

/// Nodes on one multicast group; every datagram (acks included) is dropped with probability
/// `loss_per_mille` / 1000 and delayed by up to `max_delay`, which reorders them.
struct Sim {
    nodes: Vec<Node>,
    rng: Rng,
    loss_per_mille: u64,
    max_delay: u64,
    queue: Vec<Datagram>,
    now: Instant,
    offered: u64,
    dropped: u64,
}

impl Sim {
    fn new(nodes: Vec<Node>, seed: u64, loss_per_mille: u64, max_delay: u64, now: Instant) -> Sim {
        Sim {
            nodes,
            rng: Rng(seed),
            loss_per_mille,
            max_delay,
            queue: vec![],
            now,
            offered: 0,
            dropped: 0,
        }
    }

    fn send(&mut self, from: usize, to: usize, bytes: &[u8]) {
        self.offered += 1;
        if self.rng.below(1000) < self.loss_per_mille {
            self.dropped += 1;
            return;
        }
        let delay = ms(self.rng.below(self.max_delay + 1));
        self.queue.push(Datagram {
            at: self.now + delay,
            to,
            from: self.nodes[from].addr,
            bytes: bytes.to_vec(),
        });
    }

    fn step(&mut self, dt: Duration) {
        self.now += dt;
        let now = self.now;
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        for i in 0..self.nodes.len() {
            while let Some(n) = self.nodes[i].tx.poll_transmit(now, &mut buf) {
                for j in (0..self.nodes.len()).filter(|&j| j != i) {
                    self.send(i, j, &buf[..n]);
                }
            }
        }
        self.queue.sort_by_key(|d| d.at);
        let due = self.queue.partition_point(|d| d.at <= now);
        for d in self.queue.drain(..due).collect::<Vec<_>>() {
            let node = &mut self.nodes[d.to];
            let result = node.rx.handle_message(now, d.from, &d.bytes);
            assert_eq!(result, Ok(()), "honest traffic refused");
            self.actions(d.to);
        }
    }

    fn actions(&mut self, i: usize) {
        let now = self.now;
        let mut out = vec![];
        let node = &mut self.nodes[i];
        while let Some(a) = node.rx.poll_action() {
            match a {
                SyncAction::Upsert(r) => {
                    node.table.insert(r.key(), r);
                }
                SyncAction::Delete(k) => {
                    node.table.remove(&k);
                }
                SyncAction::SendAck { to, bytes } => out.push((to, bytes)),
                SyncAction::PeerHeard { peer } => node.tx.handle_heartbeat(now, peer),
                SyncAction::PeerAck { peer, ack } => node.tx.handle_ack(now, peer, &ack),
                SyncAction::BulkRequested { from, request } => {
                    for r in node.own.values() {
                        node.tx.queue_update(*r).unwrap();
                    }
                    node.tx.queue_bulk_end(from, request).unwrap();
                }
                SyncAction::BulkComplete { .. } => node.completed = Some(node.table.len()),
                SyncAction::Gap { lost, .. } => {
                    node.gaps += lost;
                    // A resync whose answer had a hole cannot complete: ask again.
                    if matches!(node.rx.resync_state(), ResyncState::Pending { .. }) {
                        let request = node.rx.begin_resync();
                        node.tx.queue_bulk_request(request).unwrap();
                    }
                }
            }
        }
        for (to, bytes) in out {
            let j = self.nodes.iter().position(|n| n.addr == to).expect("a node");
            self.send(i, j, &bytes);
        }
    }

    fn quiescent(&self) -> bool {
        self.queue.is_empty() && self.nodes.iter().all(|n| n.tx.is_idle())
    }

    /// Steps until nothing is in flight or queued, at most `limit`.
    fn settle(&mut self, limit: Duration) {
        let end = self.now + limit;
        while !self.quiescent() {
            assert!(self.now < end, "did not settle");
            self.step(ms(5));
        }
    }
}

#[test]
fn lossy_link_converges_to_the_senders_table() {
    let t0 = Instant::now();
    // 30 % loss each way (with three heartbeats lost in a row not rare, peers wait 5 s before forgetting).
    let slow_forget = |c: &mut SyncConfig| c.peer_timeout = Duration::from_secs(5);
    let a = Node::new(1, 0xaaaa, slow_forget, t0);
    let b = Node::new(2, 0xbbbb, slow_forget, t0);
    let mut sim = Sim::new(vec![a, b], 42, 300, 30, t0);
    // Let the nodes learn each other from heartbeats (a real node would rather start with a bulk resync).
    while sim.nodes[0].tx.peers().count() == 0 {
        assert!(sim.now < t0 + Duration::from_secs(30), "peers never learned");
        sim.step(ms(5));
    }
    assert_eq!(sim.nodes[0].tx.peers().collect::<Vec<_>>(), vec![sim.nodes[1].rx.me()]);

    let mut ops = Rng(7);
    for round in 0..6000u64 {
        let k = ops.below(3000) as u32;
        let a = &mut sim.nodes[0];
        if ops.below(10) < 7 {
            let r = record(k, ops.next());
            a.own.insert(r.key(), r);
            a.tx.queue_update(r).unwrap();
        } else {
            let key = record(k, 0).key();
            a.own.remove(&key);
            a.tx.queue_delete(key).unwrap();
        }
        // Bursts of changes with quiet spells, so that both busy and idle tails see losses.
        if round % 500 < 250 || round % 5 == 0 {
            sim.step(ms(5));
        }
    }
    sim.settle(Duration::from_secs(120));

    let (a, b) = (&sim.nodes[0], &sim.nodes[1]);
    assert_eq!(b.table.len(), a.own.len());
    assert!(b.table == a.own, "receiver converged to exactly the sender's records");
    assert_eq!(b.gaps, 0);
    let (ac, bc) = (a.tx.counters(), b.rx.counters());
    let loss = sim.dropped * 1000 / sim.offered;
    assert!((250..350).contains(&loss), "the link lost {loss} per mille");
    assert!(ac.retransmits > 200, "losses repaired by retransmission: {ac:?}");
    assert_eq!((bc.forged, bc.malformed, bc.lost), (0, 0, 0));
    assert!(bc.upserts > 0 && bc.deletes > 0 && bc.acks_sent > 0);
    assert!(ac.coalesced > 0, "a busy key costs one slot");
}

#[test]
fn restart_with_a_new_epoch_is_accepted_and_old_epoch_replays_are_not() {
    let t0 = Instant::now();
    let mut sim = Sim::new(
        vec![Node::new(1, 111, |_| {}, t0), Node::new(2, 222, |_| {}, t0)],
        3,
        0,
        2,
        t0,
    );
    for _ in 0..300 {
        sim.step(ms(5));
    }
    let r1 = record(1, 1);
    sim.nodes[0].tx.queue_update(r1).unwrap();
    // Capture node 1's message on the way.
    let mut captured = vec![];
    for bytes in transmit_all(&mut sim.nodes[0].tx, sim.now) {
        if decode(&bytes).body.msg_type() == MessageType::Conns {
            captured = bytes.clone();
        }
        sim.send(0, 1, &bytes);
    }
    assert!(!captured.is_empty());
    sim.settle(Duration::from_secs(5));
    assert_eq!(sim.nodes[1].table.get(&r1.key()), Some(&r1));

    // Node 1 restarts: new epoch, sequence numbers from 1 again.
    let now = sim.now;
    sim.nodes[0] = Node::new(1, 112, |_| {}, now);
    let r2 = record(2, 2);
    sim.nodes[0].tx.queue_update(r2).unwrap();
    for _ in 0..400 {
        sim.step(ms(5));
    }
    sim.settle(Duration::from_secs(5));
    let b = &sim.nodes[1];
    assert_eq!(b.table.get(&r2.key()), Some(&r2), "new incarnation's seq 1 accepted");
    assert_eq!(b.rx.counters().restarts, 1);
    assert!(b.tx.peers().any(|p| p == PeerId { node_id: 1, epoch: 112 }));

    // The old incarnation's captured message is now a replay.
    sim.nodes[1].table.clear();
    let now = sim.now;
    let b = &mut sim.nodes[1];
    assert_eq!(b.rx.handle_message(now, addr(1), &captured), Err(RecvError::Replayed));
    assert!(b.rx.poll_action().is_none());
    assert!(b.table.is_empty());
}

#[test]
fn bulk_resync_of_10k_records_completes_over_a_lossy_link() {
    let t0 = Instant::now();
    let mut a = Node::new(1, 0xa, |_| {}, t0);
    for k in 0..10_000 {
        let r = record(k, u64::from(k) * 31);
        a.own.insert(r.key(), r);
    }
    let mut b = Node::new(2, 0xb, |_| {}, t0);
    let request = b.rx.begin_resync();
    b.tx.queue_bulk_request(request).unwrap();
    assert!(!b.rx.resynced());
    let mut sim = Sim::new(vec![a, b], 99, 300, 20, t0);
    let end = t0 + Duration::from_secs(120);
    while !sim.nodes[1].rx.resynced() {
        assert!(sim.now < end, "resync did not complete");
        sim.step(ms(5));
    }
    let (a, b) = (&sim.nodes[0], &sim.nodes[1]);
    // Complete exactly when every record is in: BULK_END is delivered in order, after all of them.
    assert_eq!(b.completed, Some(10_000));
    assert!(b.table == a.own);
    assert_eq!(
        b.rx.resync_state(),
        ResyncState::Complete {
            from: PeerId { node_id: 1, epoch: 0xa }
        }
    );
    assert!(a.tx.counters().retransmits > 0);
    assert!(a.tx.counters().entries_sent >= 10_000);
    // Node A did not request anything, so a BULK_END for B does not mark A resynced.
    assert!(!a.rx.resynced());
}
