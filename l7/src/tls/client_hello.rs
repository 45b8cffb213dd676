//! A peek at the client's first TLS record: does its ClientHello offer to resume a session? The handshake
//! pool uses it to put resumptions in their own lane (no certificate signature, no Key Server).

/// TLS 1.3 `pre_shared_key` extension.
const PRE_SHARED_KEY: u16 = 41;
/// TLS 1.2 `session_ticket` extension (resumption when not empty).
const SESSION_TICKET: u16 = 35;

/// Whether the ClientHello at the start of `bytes` offers resumption (a TLS 1.3 PSK, a TLS 1.2 ticket or
/// session id); `None` if `bytes` does not start with a complete ClientHello record.
pub fn offers_resumption(bytes: &[u8]) -> Option<bool> {
    let mut r = Reader(bytes);
    if r.u8()? != 22 {
        return None; // not a handshake record
    }
    r.take(2)?; // legacy record version
    let len = r.u16()?;
    let record = r.take(usize::from(len))?;
    let mut r = Reader(record);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let len = r.u24()?;
    let mut r = Reader(r.take(len)?);
    r.take(2 + 32)?; // version, random
    let len = r.u8()?;
    let session_id = r.take(usize::from(len))?;
    let len = r.u16()?;
    r.take(usize::from(len))?; // cipher suites
    let len = r.u8()?;
    r.take(usize::from(len))?; // compression methods
    let Some(len) = r.u16() else {
        return Some(!session_id.is_empty()); // no extensions
    };
    let mut ext = Reader(r.take(usize::from(len))?);
    let mut ticket = false;
    let mut tls13 = false;
    while let Some(kind) = ext.u16() {
        let len = ext.u16()?;
        let body = ext.take(usize::from(len))?;
        match kind {
            PRE_SHARED_KEY => return Some(true),
            SESSION_TICKET if !body.is_empty() => ticket = true,
            43 => tls13 = true, // supported_versions: a TLS 1.3 client's session id is only for middleboxes
            _ => {}
        }
    }
    Some(ticket || (!tls13 && !session_id.is_empty()))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}
