//! The sync message: [`SyncMessage`] is a zero-copy view over a UDP payload, [`SyncRepr`] its parsed, owned
//! meaning with symmetric [`SyncRepr::parse`] / [`SyncRepr::emit`].
//!
//! # Layout (integers big-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `XLBS` |
//! | 4 | 1 | version, 2 (2: records of 48 bytes with the SYN proxy's sequence delta) |
//! | 5 | 1 | type ([`MessageType`]) |
//! | 6 | 1 | flags: bit 0 [`FLAG_RETRANSMIT`] (reliable types only), others 0 |
//! | 7 | 1 | reserved, 0 |
//! | 8 | 4 | node id of the sender (not 0) |
//! | 12 | 4 | epoch of the sender: random per process start (not 0) |
//! | 16 | 8 | seq: packet number, strictly increasing per (node, epoch, space), never reused, from 1 |
//! | 24 | 8 | rseq: reliable sequence of this message (reliable types), highest sent (heartbeat), 0 (ack) |
//! | 32 | 8 | base: oldest rseq the sender can still retransmit; 0 in acks |
//! | 40 | 2 | count: entries in the body |
//! | 42 | 2 | body length in bytes |
//! | 44 | n | body |
//! | 44 + n | 32 | HMAC-SHA256 of bytes 0 .. 44 + n |
//!
//! Bodies by type:
//!
//! | type | count | body |
//! |---|---|---|
//! | 1 CONNS | 1 ..= [`MAX_CONNS`] | `count` [`ConnRecord`]s of [`RECORD_LEN`] bytes |
//! | 2 DELETES | 1 ..= [`MAX_DELETES`] | `count` [`ConnKey`]s of [`KEY_LEN`] bytes |
//! | 3 ACK | 1 | acked node u32, acked epoch u32, cumulative rseq u64, SACK bitmap 32 bytes (bit i of byte i/8, LSB first: rseq cumulative + 1 + i was received; bit 0 is 0) |
//! | 4 BULK_REQUEST | 1 | request id u32 |
//! | 5 BULK_END | 1 | requester node u32, requester epoch u32, request id u32 |
//! | 6 HEARTBEAT | 0 | empty |
//!
//! CONNS, DELETES, BULK_REQUEST and BULK_END are *reliable*: numbered by rseq, delivered in order, acked and
//! retransmitted. ACK and HEARTBEAT are not. Every message, retransmissions included, has a fresh `seq`; the
//! receiver's replay window works on `seq`, its reordering and acks on `rseq`. ACKs are numbered in their own
//! `seq` space (the receiving half of a node sends them, independently of its sending half).
//!
//! The largest message is [`MAX_MESSAGE_LEN`] bytes, so it always fits an unfragmented UDP datagram on a
//! 1500-byte link (IPv4 20 + UDP 8 + 1400, with room for a tunnel header).

use std::fmt;

use super::auth::{AuthKey, MAC_LEN};
use super::record::{ConnKey, ConnRecord, RecordError, KEY_LEN, RECORD_LEN};
use super::PeerId;

/// First bytes of every message.
pub const MAGIC: [u8; 4] = *b"XLBS";
/// The protocol version this module speaks.
pub const VERSION: u8 = 2;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 44;
/// Largest message, trailer included.
pub const MAX_MESSAGE_LEN: usize = 1400;
/// Largest body.
pub const MAX_BODY_LEN: usize = MAX_MESSAGE_LEN - HEADER_LEN - MAC_LEN;
/// Most records in a CONNS message (27).
pub const MAX_CONNS: usize = MAX_BODY_LEN / RECORD_LEN;
/// Most keys in a DELETES message (101).
pub const MAX_DELETES: usize = MAX_BODY_LEN / KEY_LEN;
/// Messages beyond the cumulative ack that an ACK can report individually.
pub const SACK_BITS: usize = 256;
/// Body length of an ACK.
pub const ACK_BODY_LEN: usize = 16 + SACK_BITS / 8;
/// Length of an ACK message.
pub const ACK_MESSAGE_LEN: usize = HEADER_LEN + ACK_BODY_LEN + MAC_LEN;
const BULK_REQUEST_LEN: usize = 4;
const BULK_END_LEN: usize = 12;

/// Header flag: this is a retransmission of an earlier message (same rseq, new seq).
pub const FLAG_RETRANSMIT: u8 = 0x01;

mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const TYPE: usize = 5;
    pub const FLAGS: usize = 6;
    pub const RESERVED: usize = 7;
    pub const NODE: Range<usize> = 8..12;
    pub const EPOCH: Range<usize> = 12..16;
    pub const SEQ: Range<usize> = 16..24;
    pub const RSEQ: Range<usize> = 24..32;
    pub const BASE: Range<usize> = 32..40;
    pub const COUNT: Range<usize> = 40..42;
    pub const BODY_LEN: Range<usize> = 42..44;
}

/// Kind of message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// Connection upserts.
    Conns = 1,
    /// Connection deletes.
    Deletes = 2,
    /// Acknowledgement of another node's reliable messages.
    Ack = 3,
    /// "Send me your whole table."
    BulkRequest = 4,
    /// End of a bulk answer.
    BulkEnd = 5,
    /// Liveness and stream position.
    Heartbeat = 6,
}

impl MessageType {
    /// The type with this code.
    pub fn from_u8(b: u8) -> Option<MessageType> {
        Some(match b {
            1 => MessageType::Conns,
            2 => MessageType::Deletes,
            3 => MessageType::Ack,
            4 => MessageType::BulkRequest,
            5 => MessageType::BulkEnd,
            6 => MessageType::Heartbeat,
            _ => return None,
        })
    }

    /// Whether messages of this type are numbered by rseq, acked and retransmitted.
    pub fn is_reliable(self) -> bool {
        matches!(
            self,
            MessageType::Conns | MessageType::Deletes | MessageType::BulkRequest | MessageType::BulkEnd
        )
    }
}

/// Why bytes are not a valid message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than a header and a trailer.
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// Longer than [`MAX_MESSAGE_LEN`].
    TooLong {
        /// Bytes received.
        len: usize,
    },
    /// The first four bytes are not `XLBS`.
    BadMagic,
    /// A version other than [`VERSION`].
    BadVersion(u8),
    /// The body length field disagrees with the datagram length.
    BadLength {
        /// The header's body length.
        body_len: usize,
        /// Bytes received.
        len: usize,
    },
    /// An unknown message type.
    UnknownType(u8),
    /// A header or body field is out of range.
    BadField(&'static str),
    /// An entry of the body is invalid.
    BadEntry {
        /// Its position in the body.
        index: usize,
        /// The problem.
        error: RecordError,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated { len } => {
                write!(
                    f,
                    "sync message truncated: {len} bytes, at least {}",
                    HEADER_LEN + MAC_LEN
                )
            }
            WireError::TooLong { len } => write!(f, "sync message too long: {len} bytes, at most {MAX_MESSAGE_LEN}"),
            WireError::BadMagic => f.write_str("not a sync message (bad magic)"),
            WireError::BadVersion(v) => write!(f, "sync message version {v}, expected {VERSION}"),
            WireError::BadLength { body_len, len } => {
                write!(
                    f,
                    "sync message body length {body_len} does not match datagram length {len}"
                )
            }
            WireError::UnknownType(t) => write!(f, "unknown sync message type {t}"),
            WireError::BadField(name) => write!(f, "sync message field `{name}` out of range"),
            WireError::BadEntry { index, error } => write!(f, "sync message entry {index}: {error}"),
        }
    }
}

impl std::error::Error for WireError {}

/// A zero-copy view of a sync message.
#[derive(Debug, Clone)]
pub struct SyncMessage<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> SyncMessage<T> {
    /// A view without checks (accessors may panic on a short buffer).
    pub fn new_unchecked(buffer: T) -> SyncMessage<T> {
        SyncMessage { buffer }
    }

    /// A view of a datagram whose framing is valid: length within bounds, magic, version, and a body length
    /// that accounts for every byte. Nothing else is checked (the HMAC comes next, then [`SyncRepr::parse`]).
    pub fn new_checked(buffer: T) -> Result<SyncMessage<T>, WireError> {
        let msg = SyncMessage { buffer };
        msg.check_len()?;
        Ok(msg)
    }

    /// Checks the framing (see [`SyncMessage::new_checked`]).
    pub fn check_len(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        let len = b.len();
        if len < HEADER_LEN + MAC_LEN {
            return Err(WireError::Truncated { len });
        }
        if len > MAX_MESSAGE_LEN {
            return Err(WireError::TooLong { len });
        }
        if b[field::MAGIC] != MAGIC {
            return Err(WireError::BadMagic);
        }
        if b[field::VERSION] != VERSION {
            return Err(WireError::BadVersion(b[field::VERSION]));
        }
        let body_len = self.body_len();
        if HEADER_LEN + body_len + MAC_LEN != len {
            return Err(WireError::BadLength { body_len, len });
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Raw type code.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Flags.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Reserved byte.
    pub fn reserved(&self) -> u8 {
        self.buffer.as_ref()[field::RESERVED]
    }

    /// Sender's node id.
    pub fn node_id(&self) -> u32 {
        u32::from_be_bytes(self.buffer.as_ref()[field::NODE].try_into().unwrap())
    }

    /// Sender's epoch.
    pub fn epoch(&self) -> u32 {
        u32::from_be_bytes(self.buffer.as_ref()[field::EPOCH].try_into().unwrap())
    }

    /// Packet number.
    pub fn seq(&self) -> u64 {
        u64::from_be_bytes(self.buffer.as_ref()[field::SEQ].try_into().unwrap())
    }

    /// Reliable sequence number.
    pub fn rseq(&self) -> u64 {
        u64::from_be_bytes(self.buffer.as_ref()[field::RSEQ].try_into().unwrap())
    }

    /// Oldest rseq the sender can retransmit.
    pub fn base(&self) -> u64 {
        u64::from_be_bytes(self.buffer.as_ref()[field::BASE].try_into().unwrap())
    }

    /// Number of body entries.
    pub fn count(&self) -> usize {
        usize::from(u16::from_be_bytes(
            self.buffer.as_ref()[field::COUNT].try_into().unwrap(),
        ))
    }

    /// Body length from the header.
    pub fn body_len(&self) -> usize {
        usize::from(u16::from_be_bytes(
            self.buffer.as_ref()[field::BODY_LEN].try_into().unwrap(),
        ))
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + self.body_len()]
    }

    /// The bytes the HMAC covers.
    pub fn signed_bytes(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[..b.len() - MAC_LEN]
    }

    /// The HMAC trailer.
    pub fn mac(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[b.len() - MAC_LEN..]
    }

    /// Whether the trailer is the HMAC of the rest under `key` (constant-time).
    pub fn verify(&self, key: &AuthKey) -> bool {
        key.verify(self.signed_bytes(), self.mac())
    }

    /// The body's CONNS records, each decoded and validated.
    pub fn records(&self) -> impl Iterator<Item = Result<ConnRecord, RecordError>> + '_ {
        self.body().chunks(RECORD_LEN).map(ConnRecord::parse)
    }

    /// The body's DELETES keys, each decoded and validated.
    pub fn keys(&self) -> impl Iterator<Item = Result<ConnKey, RecordError>> + '_ {
        self.body().chunks(KEY_LEN).map(ConnKey::parse)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SyncMessage<T> {
    /// Writes the fixed header (magic and version included).
    pub fn set_header(&mut self, msg_type: MessageType, header: &Header, count: usize, body_len: usize) {
        let b = self.buffer.as_mut();
        b[field::MAGIC].copy_from_slice(&MAGIC);
        b[field::VERSION] = VERSION;
        b[field::TYPE] = msg_type as u8;
        b[field::FLAGS] = header.flags;
        b[field::RESERVED] = 0;
        b[field::NODE].copy_from_slice(&header.node_id.to_be_bytes());
        b[field::EPOCH].copy_from_slice(&header.epoch.to_be_bytes());
        b[field::SEQ].copy_from_slice(&header.seq.to_be_bytes());
        b[field::RSEQ].copy_from_slice(&header.rseq.to_be_bytes());
        b[field::BASE].copy_from_slice(&header.base.to_be_bytes());
        b[field::COUNT].copy_from_slice(&(count as u16).to_be_bytes());
        b[field::BODY_LEN].copy_from_slice(&(body_len as u16).to_be_bytes());
    }

    /// The body, writable (its length comes from the header).
    pub fn body_mut(&mut self) -> &mut [u8] {
        let len = self.body_len();
        &mut self.buffer.as_mut()[HEADER_LEN..HEADER_LEN + len]
    }

    /// Writes the HMAC trailer over everything before it.
    pub fn sign(&mut self, key: &AuthKey) {
        let tag = key.sign(self.signed_bytes());
        let b = self.buffer.as_mut();
        let at = b.len() - MAC_LEN;
        b[at..].copy_from_slice(&tag);
    }
}

/// The header fields that are not implied by the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Flags ([`FLAG_RETRANSMIT`]).
    pub flags: u8,
    /// Sender's node id.
    pub node_id: u32,
    /// Sender's epoch.
    pub epoch: u32,
    /// Packet number.
    pub seq: u64,
    /// Reliable sequence (see the module doc for its meaning per type).
    pub rseq: u64,
    /// Oldest rseq the sender can retransmit.
    pub base: u64,
}

/// An ACK: which of a sender's reliable messages the acking node has received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckRepr {
    /// The node and incarnation whose messages are acknowledged.
    pub acked: PeerId,
    /// Every rseq up to and including this one was received (0: none).
    pub cumulative: u64,
    /// Bit `i` (word `i / 64`, bit `i % 64`): rseq `cumulative + 1 + i` was received out of order.
    pub sack: [u64; SACK_BITS / 64],
}

impl AckRepr {
    /// Whether `rseq` is acknowledged.
    pub fn covers(&self, rseq: u64) -> bool {
        if rseq <= self.cumulative {
            return true;
        }
        let i = rseq - self.cumulative - 1;
        i < SACK_BITS as u64 && self.sack[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
}

/// A BULK_END: the end of the answer to one bulk request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkEndRepr {
    /// The node (incarnation) that asked.
    pub requester: PeerId,
    /// Its request id.
    pub request: u32,
}

/// The body of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// CONNS.
    Conns(Vec<ConnRecord>),
    /// DELETES.
    Deletes(Vec<ConnKey>),
    /// ACK.
    Ack(AckRepr),
    /// BULK_REQUEST with its request id.
    BulkRequest(u32),
    /// BULK_END.
    BulkEnd(BulkEndRepr),
    /// HEARTBEAT.
    Heartbeat,
}

impl Body {
    /// The message type.
    pub fn msg_type(&self) -> MessageType {
        match self {
            Body::Conns(_) => MessageType::Conns,
            Body::Deletes(_) => MessageType::Deletes,
            Body::Ack(_) => MessageType::Ack,
            Body::BulkRequest(_) => MessageType::BulkRequest,
            Body::BulkEnd(_) => MessageType::BulkEnd,
            Body::Heartbeat => MessageType::Heartbeat,
        }
    }

    fn count(&self) -> usize {
        match self {
            Body::Conns(r) => r.len(),
            Body::Deletes(k) => k.len(),
            Body::Heartbeat => 0,
            Body::Ack(_) | Body::BulkRequest(_) | Body::BulkEnd(_) => 1,
        }
    }

    fn len(&self) -> usize {
        match self {
            Body::Conns(r) => r.len() * RECORD_LEN,
            Body::Deletes(k) => k.len() * KEY_LEN,
            Body::Ack(_) => ACK_BODY_LEN,
            Body::BulkRequest(_) => BULK_REQUEST_LEN,
            Body::BulkEnd(_) => BULK_END_LEN,
            Body::Heartbeat => 0,
        }
    }
}

/// A parsed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRepr {
    /// Header fields.
    pub header: Header,
    /// The body (gives the type and count).
    pub body: Body,
}

fn bad<T>(field: &'static str) -> Result<T, WireError> {
    Err(WireError::BadField(field))
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

impl SyncRepr {
    /// Parses and validates every field of a framed message (from [`SyncMessage::new_checked`]). The HMAC is
    /// not looked at: verify it first.
    pub fn parse<T: AsRef<[u8]>>(msg: &SyncMessage<T>) -> Result<SyncRepr, WireError> {
        msg.check_len()?;
        let msg_type = MessageType::from_u8(msg.msg_type()).ok_or(WireError::UnknownType(msg.msg_type()))?;
        let header = Header {
            flags: msg.flags(),
            node_id: msg.node_id(),
            epoch: msg.epoch(),
            seq: msg.seq(),
            rseq: msg.rseq(),
            base: msg.base(),
        };
        if msg.reserved() != 0 {
            return bad("reserved");
        }
        let allowed_flags = if msg_type.is_reliable() { FLAG_RETRANSMIT } else { 0 };
        if header.flags & !allowed_flags != 0 {
            return bad("flags");
        }
        if header.node_id == 0 {
            return bad("node_id");
        }
        if header.epoch == 0 {
            return bad("epoch");
        }
        if header.seq == 0 {
            return bad("seq");
        }
        match msg_type {
            t if t.is_reliable() => {
                if header.rseq == 0 {
                    return bad("rseq");
                }
                if header.base == 0 || header.base > header.rseq {
                    return bad("base");
                }
            }
            MessageType::Heartbeat => {
                if header.base == 0 || header.base > header.rseq.saturating_add(1) {
                    return bad("base");
                }
            }
            _ => {
                if header.rseq != 0 {
                    return bad("rseq");
                }
                if header.base != 0 {
                    return bad("base");
                }
            }
        }
        let (count, body) = (msg.count(), msg.body());
        let fixed = |len: usize, n: usize| {
            if count != n {
                bad("count")
            } else if body.len() != len {
                bad("body_len")
            } else {
                Ok(())
            }
        };
        let body = match msg_type {
            MessageType::Conns => {
                if count == 0 || count > MAX_CONNS {
                    return bad("count");
                }
                fixed(count * RECORD_LEN, count)?;
                let records = msg
                    .records()
                    .enumerate()
                    .map(|(index, r)| r.map_err(|error| WireError::BadEntry { index, error }));
                Body::Conns(records.collect::<Result<_, _>>()?)
            }
            MessageType::Deletes => {
                if count == 0 || count > MAX_DELETES {
                    return bad("count");
                }
                fixed(count * KEY_LEN, count)?;
                let keys = msg
                    .keys()
                    .enumerate()
                    .map(|(index, k)| k.map_err(|error| WireError::BadEntry { index, error }));
                Body::Deletes(keys.collect::<Result<_, _>>()?)
            }
            MessageType::Ack => {
                fixed(ACK_BODY_LEN, 1)?;
                let acked = PeerId {
                    node_id: be32(&body[0..4]),
                    epoch: be32(&body[4..8]),
                };
                if acked.node_id == 0 || acked.epoch == 0 {
                    return bad("ack.acked");
                }
                let mut sack = [0u64; SACK_BITS / 64];
                for (i, w) in sack.iter_mut().enumerate() {
                    *w = u64::from_le_bytes(body[16 + 8 * i..24 + 8 * i].try_into().unwrap());
                }
                if sack[0] & 1 != 0 {
                    return bad("ack.sack");
                }
                Body::Ack(AckRepr {
                    acked,
                    cumulative: be64(&body[8..16]),
                    sack,
                })
            }
            MessageType::BulkRequest => {
                fixed(BULK_REQUEST_LEN, 1)?;
                Body::BulkRequest(be32(body))
            }
            MessageType::BulkEnd => {
                fixed(BULK_END_LEN, 1)?;
                let requester = PeerId {
                    node_id: be32(&body[0..4]),
                    epoch: be32(&body[4..8]),
                };
                if requester.node_id == 0 || requester.epoch == 0 {
                    return bad("bulk_end.requester");
                }
                Body::BulkEnd(BulkEndRepr {
                    requester,
                    request: be32(&body[8..12]),
                })
            }
            MessageType::Heartbeat => {
                fixed(0, 0)?;
                Body::Heartbeat
            }
        };
        Ok(SyncRepr { header, body })
    }

    /// Length of the emitted message, trailer included.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.body.len() + MAC_LEN
    }

    /// Writes the message into `buf` (at least [`SyncRepr::buffer_len`] bytes) and signs it; returns its
    /// length. The repr is not validated: emit only what [`SyncRepr::parse`] accepts.
    pub fn emit(&self, buf: &mut [u8], key: &AuthKey) -> usize {
        let len = self.buffer_len();
        let mut msg = SyncMessage::new_unchecked(&mut buf[..len]);
        msg.set_header(self.body.msg_type(), &self.header, self.body.count(), self.body.len());
        let b = msg.body_mut();
        match &self.body {
            Body::Conns(records) => {
                for (r, chunk) in records.iter().zip(b.chunks_mut(RECORD_LEN)) {
                    r.emit(chunk);
                }
            }
            Body::Deletes(keys) => {
                for (k, chunk) in keys.iter().zip(b.chunks_mut(KEY_LEN)) {
                    k.emit(chunk);
                }
            }
            Body::Ack(ack) => {
                b[0..4].copy_from_slice(&ack.acked.node_id.to_be_bytes());
                b[4..8].copy_from_slice(&ack.acked.epoch.to_be_bytes());
                b[8..16].copy_from_slice(&ack.cumulative.to_be_bytes());
                for (i, w) in ack.sack.iter().enumerate() {
                    b[16 + 8 * i..24 + 8 * i].copy_from_slice(&w.to_le_bytes());
                }
            }
            Body::BulkRequest(request) => b.copy_from_slice(&request.to_be_bytes()),
            Body::BulkEnd(end) => {
                b[0..4].copy_from_slice(&end.requester.node_id.to_be_bytes());
                b[4..8].copy_from_slice(&end.requester.epoch.to_be_bytes());
                b[8..12].copy_from_slice(&end.request.to_be_bytes());
            }
            Body::Heartbeat => {}
        }
        msg.sign(key);
        len
    }
}
