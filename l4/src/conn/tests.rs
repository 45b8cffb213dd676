use super::*;
use std::net::Ipv4Addr;

fn conn(client_port: u16, lport: u16, forwarding: Forwarding) -> Conn {
    Conn {
        proto: Proto::Tcp,
        forwarding,
        client: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), client_port),
        vip: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80),
        local: SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 10), lport),
        backend: SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 2), 8080),
        listener: 0,
        server: 0,
        state: ConnState::SynRecv,
        fins: FinSeen::default(),
        client_port: 0,
        client_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
        client_packets: 1,
        synced: false,
        proxy: ProxyPhase::None,
        seq_delta: 0,
        answered: false,
    }
}

#[test]
fn entries_are_one_cache_line() {
    assert_eq!(std::mem::size_of::<Entry>(), 64);
    let t = ConnTable::new(100, Timeouts::default(), Instant::now());
    assert_eq!(t.entries.as_ptr() as usize % 64, 0);
    // 100 entries, 200 keys in 40 buckets, the free list, the wheel (4096 heads, two links per entry) and the
    // eviction lists (two links per entry).
    assert_eq!(
        t.memory_bytes(),
        100 * 64 + 40 * 64 + 100 * 4 + (4096 + 200) * 4 + 200 * 4
    );
}

#[test]
fn lookup_by_both_directions() {
    let t0 = Instant::now();
    let mut t = ConnTable::new(16, Timeouts::default(), t0);
    let c = conn(40000, 5000, Forwarding::Fullnat);
    let id = t.insert(t0, c).unwrap();
    assert_eq!(t.lookup(&c.client_key()), Some(id));
    assert_eq!(t.lookup(&c.server_key().unwrap()), Some(id));
    let dr = conn(40001, 0, Forwarding::Dr);
    let id2 = t.insert(t0, dr).unwrap();
    assert_eq!(t.lookup(&dr.client_key()), Some(id2));
    assert_eq!(dr.server_key(), None);
    assert_eq!(t.len(), 2);
}

#[test]
fn expires_by_state_timeout_and_touch_extends() {
    let t0 = Instant::now();
    let mut t = ConnTable::new(16, Timeouts::default(), t0);
    let c = conn(40000, 5000, Forwarding::Fullnat);
    let id = t.insert(t0, c).unwrap();
    // SynRecv: 60 s.
    assert_eq!(t.expire(t0 + Duration::from_secs(59), usize::MAX, |_| {}), 0);
    t.get_mut(id).state = ConnState::Established;
    t.touch(id, t0 + Duration::from_secs(59));
    assert_eq!(
        t.expire(t0 + Duration::from_secs(61), usize::MAX, |_| {}),
        0,
        "touched: now 900 s"
    );
    assert_eq!(t.expire(t0 + Duration::from_secs(958), usize::MAX, |_| {}), 0);
    let mut seen = vec![];
    assert_eq!(
        t.expire(t0 + Duration::from_secs(960), usize::MAX, |c| seen.push(*c)),
        1
    );
    assert_eq!(seen[0].client, c.client);
    assert!(t.is_empty());
    assert_eq!(t.lookup(&c.client_key()), None);
    assert_eq!(t.lookup(&c.server_key().unwrap()), None);
}

#[test]
fn last_sync_is_when_and_in_which_state_it_was_marked() {
    let t0 = Instant::now();
    let mut t = ConnTable::new(4, Timeouts::default(), t0);
    let id = t.insert(t0, conn(40000, 5000, Forwarding::Fullnat)).unwrap();
    assert_eq!(t.last_sync(id), None);
    t.get_mut(id).state = ConnState::Established;
    t.mark_synced(id, t0 + Duration::from_millis(2550));
    assert!(t.get(id).synced);
    let expected = LastSync {
        at: t0 + Duration::from_millis(2500),
        state: ConnState::Established,
    };
    assert_eq!(t.last_sync(id), Some(expected), "to the tick, rounded down");
    // A later state change is not what the peers were told.
    t.get_mut(id).state = ConnState::FinWait;
    assert_eq!(t.last_sync(id), Some(expected));
}

#[test]
fn removed_entries_vanish_at_once_and_their_slot_is_free_at_once() {
    let t0 = Instant::now();
    let mut t = ConnTable::new(1, Timeouts::default(), t0);
    let c = conn(1, 1, Forwarding::Fullnat);
    let id = t.insert(t0, c).unwrap();
    t.remove(id);
    assert_eq!(t.lookup(&c.client_key()), None);
    assert_eq!(t.lookup(&c.server_key().unwrap()), None);
    assert_eq!((t.len(), t.iter().count()), (0, 0));
    let c2 = conn(2, 2, Forwarding::Fullnat);
    assert!(t.insert(t0, c2).is_ok(), "the slot left the wheel with the entry");
    let mut seen = vec![];
    assert_eq!(
        t.expire(t0 + Duration::from_secs(61), usize::MAX, |c| seen.push(c.client)),
        1
    );
    assert_eq!(seen, vec![c2.client], "no callback for the removed entry");
}

#[test]
fn a_full_table_evicts_closed_then_closing_entries_oldest_first_never_live_ones() {
    let t0 = Instant::now();
    let mut t = ConnTable::new(4, Timeouts::default(), t0);
    let ids: Vec<ConnId> = (0..4)
        .map(|i| t.insert(t0, conn(i, i, Forwarding::Fullnat)).unwrap())
        .collect();
    let set = |t: &mut ConnTable, id: ConnId, state: ConnState, at: u64| {
        t.get_mut(id).state = state;
        t.touch(id, t0 + Duration::from_secs(at));
    };
    set(&mut t, ids[0], ConnState::Established, 1);
    set(&mut t, ids[1], ConnState::FinWait, 2);
    set(&mut t, ids[2], ConnState::TimeWait, 3);
    set(&mut t, ids[3], ConnState::Close, 4);
    let now = t0 + Duration::from_secs(5);
    assert_eq!(t.insert(now, conn(9, 9, Forwarding::Fullnat)), Err(TableFull));
    let order: Vec<(u16, Duration)> = std::iter::from_fn(|| t.evict_oldest(now))
        .map(|(c, left)| (c.client.port(), left))
        .collect();
    // TIME_WAIT (120 s from 3 s) and CLOSE (10 s from 4 s) by when they entered, then FIN_WAIT.
    assert_eq!(
        order,
        vec![
            (2, Duration::from_secs(118)),
            (3, Duration::from_secs(9)),
            (1, Duration::from_secs(117))
        ]
    );
    assert_eq!(t.len(), 1, "the established entry stays");
    assert!(t.lookup(&conn(0, 0, Forwarding::Fullnat).client_key()).is_some());
    assert!(t.insert(now, conn(9, 9, Forwarding::Fullnat)).is_ok());
}

#[test]
fn an_entry_reopened_by_a_syn_is_no_longer_evictable() {
    let t0 = Instant::now();
    let mut t = ConnTable::new(1, Timeouts::default(), t0);
    let id = t.insert(t0, conn(1, 1, Forwarding::Fullnat)).unwrap();
    t.get_mut(id).state = ConnState::TimeWait;
    t.touch(id, t0);
    t.get_mut(id).state = ConnState::SynRecv;
    t.touch(id, t0);
    assert_eq!(t.evict_oldest(t0), None);
}

#[test]
fn a_replaced_entry_expires_at_its_new_deadline_even_if_earlier() {
    let t0 = Instant::now();
    let mut t = ConnTable::new(2, Timeouts::default(), t0);
    let mut c = conn(1, 1, Forwarding::Fullnat);
    c.state = ConnState::Established;
    t.insert(t0, c).unwrap(); // 900 s
    c.state = ConnState::SynRecv;
    t.insert_expiring(t0, c, Duration::from_secs(5)).unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t.expire(t0 + Duration::from_secs(5), usize::MAX, |_| {}), 1);
}

#[test]
fn full_table_refuses_and_frees_after_expiry() {
    let t0 = Instant::now();
    let mut t = ConnTable::new(2, Timeouts::default(), t0);
    t.insert(t0, conn(1, 1, Forwarding::Fullnat)).unwrap();
    t.insert(t0, conn(2, 2, Forwarding::Fullnat)).unwrap();
    assert_eq!(t.insert(t0, conn(3, 3, Forwarding::Fullnat)), Err(TableFull));
    t.expire(t0 + Duration::from_secs(61), usize::MAX, |_| {});
    assert!(t
        .insert(t0 + Duration::from_secs(61), conn(3, 3, Forwarding::Fullnat))
        .is_ok());
}

#[test]
fn many_connections_expire_without_loss_under_a_budget() {
    let t0 = Instant::now();
    let n = 10_000;
    let mut t = ConnTable::new(n, Timeouts::default(), t0);
    for i in 0..n as u16 {
        t.insert(
            t0 + Duration::from_millis(u64::from(i)),
            conn(i, i, Forwarding::Fullnat),
        )
        .unwrap();
    }
    let mut removed = 0;
    let mut now = t0 + Duration::from_secs(70);
    for _ in 0..100 {
        removed += t.expire(now, 500, |_| {});
        now += Duration::from_millis(10);
    }
    assert_eq!(removed, n);
    assert!(t.is_empty());
}

#[test]
fn random_inserts_replacements_and_removals_match_a_hashmap() {
    use std::collections::HashMap;
    let t0 = Instant::now();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rand = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let capacity = 150;
    let mut t = ConnTable::new(capacity, Timeouts::default(), t0);
    // key → id, with the hash map's semantics: a server key taken by a newer entry leads to the newer one.
    let mut model: HashMap<FlowKey, ConnId> = HashMap::new();
    let mut live: HashMap<ConnId, Conn> = HashMap::new();
    let mut all_keys = vec![];
    let (mut refused, mut expired_total) = (0, 0);
    for round in 0..20_000u64 {
        // 100 ms per round: entries (60 s in SynRecv) expire and removed slots return during the run.
        let now = t0 + Duration::from_millis(100 * round);
        if rand(10) < 9 {
            // Few client ports and local ports: replacements and shared server keys happen.
            let forwarding = if rand(4) == 0 {
                Forwarding::Dr
            } else {
                Forwarding::Fullnat
            };
            let c = conn(rand(4000) as u16, rand(600) as u16, forwarding);
            match t.insert(now, c) {
                Ok(id) => {
                    if let Some(old) = live.insert(id, c) {
                        assert_eq!(old.client_key(), c.client_key(), "replaced in place");
                        if let Some(k) = old.server_key() {
                            if model.get(&k) == Some(&id) {
                                model.remove(&k);
                            }
                        }
                    }
                    model.insert(c.client_key(), id);
                    all_keys.push(c.client_key());
                    if let Some(k) = c.server_key() {
                        model.insert(k, id);
                        all_keys.push(k);
                    }
                }
                // Full: every slot live or removed and still in the wheel.
                Err(TableFull) => {
                    assert!(t.free.is_empty(), "refused only when full");
                    refused += 1;
                }
            }
        } else if let Some(&id) = live.keys().nth(rand(live.len().max(1) as u64) as usize) {
            let c = t.remove(id);
            assert_eq!(live.remove(&id), Some(c));
            model.retain(|_, v| *v != id);
        }
        if round % 500 == 0 || round == 19_999 {
            let mut expired = vec![];
            t.expire(now, usize::MAX, |c| expired.push(*c));
            expired_total += expired.len();
            for c in expired {
                let id = model[&c.client_key()];
                assert_eq!(live.remove(&id), Some(c));
                model.retain(|_, v| *v != id);
            }
            assert_eq!(t.len(), live.len());
            for k in &all_keys {
                assert_eq!(t.lookup(k), model.get(k).copied(), "round {round}: {k:?}");
            }
        }
    }
    // Everything expires: no key leads anywhere.
    let n = t.expire(t0 + Duration::from_secs(100_000), usize::MAX, |_| {});
    assert_eq!(n, live.len());
    assert!(
        refused > 0 && expired_total > 0,
        "full {refused} times, {expired_total} expired"
    );
    assert!(t.is_empty());
    assert!(all_keys.iter().all(|k| t.lookup(k).is_none()));
    assert!(t.index.is_empty());
}

#[test]
fn expiry_with_a_budget_scaled_to_inserts_keeps_up_with_any_insert_rate() {
    // 100k short-lived entries per second for 6 s of 100 ms turns (close timeout 1 s), with the budget the
    // forwarder uses: a base plus twice the inserts since the last call. The table never holds more than
    // about one timeout's worth of entries, where a fixed budget fills it.
    let t0 = Instant::now();
    let timeouts = Timeouts {
        tcp_close: 1,
        ..Timeouts::default()
    };
    let mut t = ConnTable::new(150_000, timeouts, t0);
    let (mut port, mut last_inserted, mut peak) = (0u32, 0u64, 0usize);
    for turn in 0..60u64 {
        let now = t0 + TICK * turn as u32;
        let budget = 256 + 2 * (t.inserted() - last_inserted) as usize;
        last_inserted = t.inserted();
        t.expire(now, budget, |_| {});
        for _ in 0..10_000 {
            let mut c = conn((port % 65_536) as u16, (port / 65_536) as u16, Forwarding::Dr);
            c.client = SocketAddrV4::new(Ipv4Addr::from(0xC612_0000 + port), c.client.port());
            c.state = ConnState::Close;
            t.insert(now, c).expect("expiry keeps room");
            port += 1;
        }
        peak = peak.max(t.len());
    }
    // Entries live 10 ticks after the tick they were inserted in: at most 11 turns' worth, plus the turn
    // whose expiry has not run yet.
    assert!(peak <= 12 * 10_000, "peak {peak}: expiry fell behind");
    // A fixed budget of 4096 visits per turn (milestone 1) could not keep up.
    let mut fixed = ConnTable::new(150_000, t.timeouts().clone(), t0);
    let full = (0..60u64).any(|turn| {
        let now = t0 + TICK * turn as u32;
        fixed.expire(now, 4096, |_| {});
        (0..10_000u32).any(|i| {
            let mut c = conn(0, 0, Forwarding::Dr);
            c.client = SocketAddrV4::new(Ipv4Addr::from(0xC612_0000 + turn as u32 * 10_000 + i), 1);
            c.state = ConnState::Close;
            fixed.insert(now, c).is_err()
        })
    });
    assert!(full, "the comparison shows what the scaled budget fixes");
}
