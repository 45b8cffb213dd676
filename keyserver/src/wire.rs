//! The Key Server wire protocol: sans-IO framing over any byte stream.
//!
//! Every integer is big-endian. A client sends requests; the server answers each
//! with one response carrying the same request id, in completion order (not
//! request order): many requests may be in flight on one connection.
//!
//! Request (50-byte header, then the payload):
//!
//! ```text
//! offset size field
//!      0    1 magic     0x4B ('K')
//!      1    1 version   0x01
//!      2    1 opcode    1 Sign, 2 Ping, 3 ListKeys, 4 Stats
//!      3    1 reserved  0 (ignored)
//!      4    8 id        request id chosen by the client
//!     12   32 key id    SHA-256 of the certificate's SubjectPublicKeyInfo DER (zeros unless Sign)
//!     44    2 scheme    TLS SignatureScheme code point (0 unless Sign)
//!     46    4 length    payload length, at most MAX_PAYLOAD (65 536)
//!     50    n payload   Sign: the message to sign; others: empty
//! ```
//!
//! Response (16-byte header, then the payload):
//!
//! ```text
//! offset size field
//!      0    1 magic     0x4B ('K')
//!      1    1 version   0x01
//!      2    1 opcode    the request's opcode
//!      3    1 status    see [`Status`]
//!      4    8 id        the request's id
//!     12    4 length    payload length, at most MAX_PAYLOAD
//!     16    n payload   Sign: the signature; ListKeys: n/32 key ids; Stats: UTF-8 text;
//!                       any non-ok status: an optional UTF-8 reason
//! ```

use std::fmt;

/// First byte of every frame.
pub const MAGIC: u8 = 0x4B;
/// Protocol version carried in byte 1 of every frame.
pub const VERSION: u8 = 1;
/// Largest payload accepted in either direction.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Size of a request header.
pub const REQUEST_HEADER_LEN: usize = 50;
/// Size of a response header.
pub const RESPONSE_HEADER_LEN: usize = 16;

/// A key's identity: SHA-256 of its SubjectPublicKeyInfo DER.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct KeyId(pub [u8; 32]);

impl KeyId {
    /// The id of a public key given as SubjectPublicKeyInfo DER.
    pub fn from_spki(spki_der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
        let mut id = [0u8; 32];
        id.copy_from_slice(digest.as_ref());
        KeyId(id)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut id = [0u8; 32];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(KeyId(id))
    }

    /// The first 8 bytes in hex, for logs.
    pub fn short(&self) -> String {
        self.0[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.short())
    }
}

/// Request operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// Sign the payload with `key_id` under `scheme`.
    Sign = 1,
    /// Health / latency probe: answered `Ok` with an empty payload.
    Ping = 2,
    /// Ids of the keys this caller may use, 32 bytes each.
    ListKeys = 3,
    /// The server's counters as UTF-8 text.
    Stats = 4,
}

impl Opcode {
    /// All opcodes, in code order.
    pub const ALL: [Opcode; 4] = [Opcode::Sign, Opcode::Ping, Opcode::ListKeys, Opcode::Stats];

    /// Decodes an opcode byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|op| *op as u8 == v)
    }

    /// Lower-case name for logs and counters.
    pub fn name(self) -> &'static str {
        match self {
            Opcode::Sign => "sign",
            Opcode::Ping => "ping",
            Opcode::ListKeys => "list_keys",
            Opcode::Stats => "stats",
        }
    }
}

/// Response status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// Done; the payload is the result.
    Ok = 0,
    /// No key with that id is loaded.
    UnknownKey = 1,
    /// The caller may not use that key.
    NotAuthorized = 2,
    /// The key cannot sign with that scheme.
    UnsupportedScheme = 3,
    /// The request was well framed but meaningless (e.g. empty message).
    BadRequest = 4,
    /// Signing failed inside the server.
    InternalError = 5,
    /// The signing queue is full; retry later or elsewhere.
    Overloaded = 6,
}

impl Status {
    /// All statuses, in code order.
    pub const ALL: [Status; 7] = [
        Status::Ok,
        Status::UnknownKey,
        Status::NotAuthorized,
        Status::UnsupportedScheme,
        Status::BadRequest,
        Status::InternalError,
        Status::Overloaded,
    ];

    /// Decodes a status byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as u8 == v)
    }

    /// Lower-case name for logs and counters.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::UnknownKey => "unknown_key",
            Status::NotAuthorized => "not_authorized",
            Status::UnsupportedScheme => "unsupported_scheme",
            Status::BadRequest => "bad_request",
            Status::InternalError => "internal_error",
            Status::Overloaded => "overloaded",
        }
    }
}

/// A request frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub opcode: Opcode,
    /// Chosen by the client, echoed in the response.
    pub id: u64,
    /// The key to sign with (Sign only).
    pub key_id: KeyId,
    /// TLS SignatureScheme code point (Sign only).
    pub scheme: u16,
    /// The message to sign (Sign only).
    pub payload: Vec<u8>,
}

/// A response frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The request's opcode.
    pub opcode: Opcode,
    /// Outcome.
    pub status: Status,
    /// The request's id.
    pub id: u64,
    /// Result (or a UTF-8 reason when `status` is not `Ok`).
    pub payload: Vec<u8>,
}

/// Malformed input; the connection carrying it must be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Byte 0 is not [`MAGIC`]: not a Key Server peer, or the stream lost sync.
    #[error("bad magic byte {0:#04x} (expected {MAGIC:#04x}): peer does not speak the key server protocol")]
    BadMagic(u8),
    /// Byte 1 is not [`VERSION`].
    #[error("unsupported protocol version {0} (this build speaks {VERSION})")]
    BadVersion(u8),
    /// Unknown opcode byte.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u8),
    /// Unknown status byte.
    #[error("unknown status {0}")]
    UnknownStatus(u8),
    /// Declared payload length above [`MAX_PAYLOAD`].
    #[error("payload length {0} exceeds the {MAX_PAYLOAD}-byte limit")]
    Oversized(u32),
    /// Encoding side ([`encode`]): a payload too large to frame.
    #[error("payload of {0} bytes is too large to send (limit {MAX_PAYLOAD})")]
    PayloadTooLarge(usize),
}

/// A frame type the [`Decoder`] can produce.
pub trait Frame: Sized {
    /// Fixed header size.
    const HEADER_LEN: usize;
    /// Validates a complete header and returns the payload length it declares.
    fn payload_len(header: &[u8]) -> Result<usize, WireError>;
    /// Builds the frame from a validated header and its payload.
    fn parse(header: &[u8], payload: &[u8]) -> Result<Self, WireError>;
    /// Appends the encoded frame to `out`.
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError>;
}

fn check_prefix(header: &[u8]) -> Result<(), WireError> {
    if header[0] != MAGIC {
        return Err(WireError::BadMagic(header[0]));
    }
    if header[1] != VERSION {
        return Err(WireError::BadVersion(header[1]));
    }
    Ok(())
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn checked_len(len: u32) -> Result<usize, WireError> {
    if len as usize > MAX_PAYLOAD {
        Err(WireError::Oversized(len))
    } else {
        Ok(len as usize)
    }
}

impl Frame for Request {
    const HEADER_LEN: usize = REQUEST_HEADER_LEN;

    fn payload_len(h: &[u8]) -> Result<usize, WireError> {
        check_prefix(h)?;
        Opcode::from_u8(h[2]).ok_or(WireError::UnknownOpcode(h[2]))?;
        checked_len(be_u32(&h[46..50]))
    }

    fn parse(h: &[u8], payload: &[u8]) -> Result<Self, WireError> {
        let opcode = Opcode::from_u8(h[2]).ok_or(WireError::UnknownOpcode(h[2]))?;
        let mut key_id = [0u8; 32];
        key_id.copy_from_slice(&h[12..44]);
        Ok(Request {
            opcode,
            id: be_u64(&h[4..12]),
            key_id: KeyId(key_id),
            scheme: u16::from_be_bytes([h[44], h[45]]),
            payload: payload.to_vec(),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        if self.payload.len() > MAX_PAYLOAD {
            return Err(WireError::PayloadTooLarge(self.payload.len()));
        }
        out.reserve(REQUEST_HEADER_LEN + self.payload.len());
        out.extend_from_slice(&[MAGIC, VERSION, self.opcode as u8, 0]);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&self.key_id.0);
        out.extend_from_slice(&self.scheme.to_be_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.payload);
        Ok(())
    }
}

impl Frame for Response {
    const HEADER_LEN: usize = RESPONSE_HEADER_LEN;

    fn payload_len(h: &[u8]) -> Result<usize, WireError> {
        check_prefix(h)?;
        Opcode::from_u8(h[2]).ok_or(WireError::UnknownOpcode(h[2]))?;
        Status::from_u8(h[3]).ok_or(WireError::UnknownStatus(h[3]))?;
        checked_len(be_u32(&h[12..16]))
    }

    fn parse(h: &[u8], payload: &[u8]) -> Result<Self, WireError> {
        Ok(Response {
            opcode: Opcode::from_u8(h[2]).ok_or(WireError::UnknownOpcode(h[2]))?,
            status: Status::from_u8(h[3]).ok_or(WireError::UnknownStatus(h[3]))?,
            id: be_u64(&h[4..12]),
            payload: payload.to_vec(),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        if self.payload.len() > MAX_PAYLOAD {
            return Err(WireError::PayloadTooLarge(self.payload.len()));
        }
        out.reserve(RESPONSE_HEADER_LEN + self.payload.len());
        out.extend_from_slice(&[MAGIC, VERSION, self.opcode as u8, self.status as u8]);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.payload);
        Ok(())
    }
}

/// Incremental decoder: feed bytes with [`Decoder::push`], take frames with
/// [`Decoder::poll_frame`]. After the first error it stays failed.
#[derive(Debug)]
pub struct Decoder<F: Frame> {
    buf: Vec<u8>,
    start: usize,
    failed: Option<WireError>,
    _frame: std::marker::PhantomData<F>,
}

impl<F: Frame> Default for Decoder<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Frame> Decoder<F> {
    /// An empty decoder.
    pub fn new() -> Self {
        Decoder {
            buf: Vec::new(),
            start: 0,
            failed: None,
            _frame: std::marker::PhantomData,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as a frame (a partial frame when non-zero).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, `Err` on malformed input.
    pub fn poll_frame(&mut self) -> Result<Option<F>, WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let avail = &self.buf[self.start..];
        // Validate the prefix early so garbage is refused without waiting for a full header.
        if let Some(&m) = avail.first() {
            if m != MAGIC {
                return Err(self.fail(WireError::BadMagic(m)));
            }
        }
        if avail.len() < F::HEADER_LEN {
            return Ok(None);
        }
        let (header, rest) = avail.split_at(F::HEADER_LEN);
        let len = match F::payload_len(header) {
            Ok(len) => len,
            Err(e) => return Err(self.fail(e)),
        };
        if rest.len() < len {
            return Ok(None);
        }
        let frame = match F::parse(header, &rest[..len]) {
            Ok(f) => f,
            Err(e) => return Err(self.fail(e)),
        };
        self.start += F::HEADER_LEN + len;
        Ok(Some(frame))
    }

    fn fail(&mut self, e: WireError) -> WireError {
        self.failed = Some(e.clone());
        e
    }
}

/// Encodes a frame into a fresh buffer.
pub fn encode<F: Frame>(frame: &F) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    frame.encode(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests;
