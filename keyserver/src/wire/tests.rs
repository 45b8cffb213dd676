use super::*;

fn req(opcode: Opcode, id: u64, payload: &[u8]) -> Request {
    Request {
        opcode,
        id,
        key_id: KeyId([7; 32]),
        scheme: 0x0403,
        payload: payload.to_vec(),
    }
}

/// Deterministic xorshift so the property test is reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn request_layout_matches_the_documented_table() {
    let bytes = encode(&req(Opcode::Sign, 0x0102030405060708, b"abc")).unwrap();
    assert_eq!(bytes.len(), REQUEST_HEADER_LEN + 3);
    assert_eq!(&bytes[..4], &[MAGIC, VERSION, 1, 0]);
    assert_eq!(&bytes[4..12], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(&bytes[12..44], &[7; 32]);
    assert_eq!(&bytes[44..46], &[0x04, 0x03]);
    assert_eq!(&bytes[46..50], &[0, 0, 0, 3]);
    assert_eq!(&bytes[50..], b"abc");
}

#[test]
fn response_layout_matches_the_documented_table() {
    let r = Response {
        opcode: Opcode::Sign,
        status: Status::Overloaded,
        id: 9,
        payload: vec![1, 2],
    };
    let bytes = encode(&r).unwrap();
    assert_eq!(&bytes[..4], &[MAGIC, VERSION, 1, 6]);
    assert_eq!(&bytes[4..12], &9u64.to_be_bytes());
    assert_eq!(&bytes[12..16], &[0, 0, 0, 2]);
    assert_eq!(&bytes[16..], &[1, 2]);
}

#[test]
fn decoder_waits_for_truncated_frames_and_yields_them_whole() {
    let bytes = encode(&req(Opcode::Sign, 42, &[9; 100])).unwrap();
    let mut d = Decoder::<Request>::new();
    for (i, b) in bytes.iter().enumerate() {
        assert_eq!(d.poll_frame().unwrap(), None, "frame yielded after only {i} bytes");
        d.push(&[*b]);
    }
    assert_eq!(d.poll_frame().unwrap(), Some(req(Opcode::Sign, 42, &[9; 100])));
    assert_eq!(d.poll_frame().unwrap(), None);
    assert_eq!(d.buffered(), 0);
}

#[test]
fn several_frames_in_one_push() {
    let mut bytes = Vec::new();
    for id in 0..5 {
        req(Opcode::Ping, id, b"").encode(&mut bytes).unwrap();
    }
    let mut d = Decoder::<Request>::new();
    d.push(&bytes);
    for id in 0..5 {
        assert_eq!(d.poll_frame().unwrap().unwrap().id, id);
    }
    assert_eq!(d.poll_frame().unwrap(), None);
}

#[test]
fn bad_magic_is_refused_on_the_first_byte_and_sticks() {
    let mut d = Decoder::<Request>::new();
    d.push(b"G");
    assert_eq!(d.poll_frame(), Err(WireError::BadMagic(b'G')));
    d.push(&encode(&req(Opcode::Ping, 1, b"")).unwrap());
    assert_eq!(d.poll_frame(), Err(WireError::BadMagic(b'G')));
}

#[test]
fn bad_version_unknown_opcode_and_status_are_refused() {
    let mut bytes = encode(&req(Opcode::Sign, 1, b"x")).unwrap();
    bytes[1] = 9;
    let mut d = Decoder::<Request>::new();
    d.push(&bytes);
    assert_eq!(d.poll_frame(), Err(WireError::BadVersion(9)));

    let mut bytes = encode(&req(Opcode::Sign, 1, b"x")).unwrap();
    bytes[2] = 77;
    let mut d = Decoder::<Request>::new();
    d.push(&bytes);
    assert_eq!(d.poll_frame(), Err(WireError::UnknownOpcode(77)));

    let r = Response {
        opcode: Opcode::Ping,
        status: Status::Ok,
        id: 1,
        payload: vec![],
    };
    let mut bytes = encode(&r).unwrap();
    bytes[3] = 200;
    let mut d = Decoder::<Response>::new();
    d.push(&bytes);
    assert_eq!(d.poll_frame(), Err(WireError::UnknownStatus(200)));
}

#[test]
fn oversized_length_is_refused_from_the_header_alone() {
    let mut bytes = encode(&req(Opcode::Sign, 1, b"")).unwrap();
    bytes[46..50].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_be_bytes());
    let mut d = Decoder::<Request>::new();
    d.push(&bytes); // header only: the decoder must not wait for 64 KiB of payload
    assert_eq!(d.poll_frame(), Err(WireError::Oversized(MAX_PAYLOAD as u32 + 1)));
    let mut bytes = encode(&req(Opcode::Sign, 1, b"")).unwrap();
    bytes[46..50].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut d = Decoder::<Request>::new();
    d.push(&bytes);
    assert_eq!(d.poll_frame(), Err(WireError::Oversized(u32::MAX)));
}

#[test]
fn encoder_refuses_payloads_over_the_limit_and_accepts_the_limit() {
    assert_eq!(
        encode(&req(Opcode::Sign, 1, &vec![0; MAX_PAYLOAD + 1])),
        Err(WireError::PayloadTooLarge(MAX_PAYLOAD + 1))
    );
    let big = req(Opcode::Sign, 1, &vec![3; MAX_PAYLOAD]);
    let mut d = Decoder::<Request>::new();
    d.push(&encode(&big).unwrap());
    assert_eq!(d.poll_frame().unwrap(), Some(big));
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = Rng(0x9E3779B97F4A7C15);
    for _ in 0..2000 {
        let len = rng.below(200) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if !bytes.is_empty() && rng.below(2) == 0 {
            bytes[0] = MAGIC; // get past the first check more often
            if bytes.len() > 1 {
                bytes[1] = VERSION;
            }
        }
        let mut d = Decoder::<Request>::new();
        d.push(&bytes);
        while let Ok(Some(_)) = d.poll_frame() {}
        let mut d = Decoder::<Response>::new();
        d.push(&bytes);
        while let Ok(Some(_)) = d.poll_frame() {}
    }
}

#[test]
fn property_round_trip_with_random_frames_and_random_chunking() {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    for _round in 0..200 {
        let n = 1 + rng.below(20) as usize;
        let mut reqs = Vec::new();
        let mut resps = Vec::new();
        for _ in 0..n {
            let op = Opcode::ALL[rng.below(4) as usize];
            let len = if rng.below(10) == 0 {
                rng.below(MAX_PAYLOAD as u64 + 1)
            } else {
                rng.below(300)
            } as usize;
            let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let mut key = [0u8; 32];
            key.iter_mut().for_each(|b| *b = rng.next() as u8);
            reqs.push(Request {
                opcode: op,
                id: rng.next(),
                key_id: KeyId(key),
                scheme: rng.next() as u16,
                payload: payload.clone(),
            });
            resps.push(Response {
                opcode: op,
                status: Status::ALL[rng.below(7) as usize],
                id: rng.next(),
                payload,
            });
        }
        let mut req_bytes = Vec::new();
        reqs.iter().for_each(|r| r.encode(&mut req_bytes).unwrap());
        let mut resp_bytes = Vec::new();
        resps.iter().for_each(|r| r.encode(&mut resp_bytes).unwrap());

        let mut got_reqs = Vec::new();
        let mut d = Decoder::<Request>::new();
        let mut rest = &req_bytes[..];
        while !rest.is_empty() {
            let k = (1 + rng.below(4096) as usize).min(rest.len());
            d.push(&rest[..k]);
            rest = &rest[k..];
            while let Some(f) = d.poll_frame().unwrap() {
                got_reqs.push(f);
            }
        }
        assert_eq!(got_reqs, reqs);

        let mut got_resps = Vec::new();
        let mut d = Decoder::<Response>::new();
        let mut rest = &resp_bytes[..];
        while !rest.is_empty() {
            let k = (1 + rng.below(4096) as usize).min(rest.len());
            d.push(&rest[..k]);
            rest = &rest[k..];
            while let Some(f) = d.poll_frame().unwrap() {
                got_resps.push(f);
            }
        }
        assert_eq!(got_resps, resps);
    }
}

#[test]
fn key_id_hex_round_trip() {
    let id = KeyId::from_spki(b"some spki");
    assert_eq!(KeyId::from_hex(&id.to_string()), Some(id));
    assert_eq!(id.short().len(), 16);
    assert_eq!(KeyId::from_hex("zz"), None);
    assert_eq!(KeyId::from_hex(&"g".repeat(64)), None);
}
