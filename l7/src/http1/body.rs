//! Message bodies, streamed: incremental decoders (Content-Length, chunked, until close) that hand out slices of
//! the input, and the chunked encoder the proxy re-frames bodies with.
//!
//! A decoder keeps a few integers of state and, for chunked bodies, the trailer section (bounded by
//! `max_trailer_bytes`, allocated only if a trailer arrives). Body bytes are never copied by the decoder.

use super::{BodyFraming, Refusal};

/// What one decoding step produced.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyEvent<'a> {
    /// Body bytes (a slice of the input).
    Data(&'a [u8]),
    /// The body is complete; trailers (if any) are in [`BodyDecoder::trailers`].
    End,
}

/// Incremental body decoder for one message.
#[derive(Clone, Debug)]
pub struct BodyDecoder {
    state: State,
    /// Body bytes seen so far.
    received: u64,
    max_body: u64,
    max_trailer_bytes: usize,
    trailers: Vec<u8>,
    ext_len: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Length {
        remaining: u64,
    },
    UntilClose,
    /// Reading chunk-size hex digits (`digits` so far).
    Size {
        value: u64,
        digits: u8,
    },
    /// After the size: optional whitespace before `;` or CR.
    SizeSpace {
        value: u64,
    },
    /// Inside a chunk extension, up to CR.
    Ext {
        value: u64,
    },
    /// CR seen after the size line; expecting LF.
    SizeLf {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// Start of a trailer line (or the final empty line).
    TrailerLineStart,
    TrailerLine,
    TrailerLf,
    /// CR at the start of a line: expecting the final LF.
    EndLf,
    Done,
}

impl BodyDecoder {
    /// A decoder for `framing`; refuses bodies over `max_body` bytes (`u64::MAX` for no limit) with
    /// [`Refusal::BodyTooLarge`].
    pub fn new(framing: BodyFraming, max_body: u64, max_trailer_bytes: usize) -> Self {
        let state = match framing {
            BodyFraming::None | BodyFraming::Length(0) => State::Done,
            BodyFraming::Length(n) => State::Length { remaining: n },
            BodyFraming::Chunked => State::Size { value: 0, digits: 0 },
            BodyFraming::UntilClose => State::UntilClose,
        };
        BodyDecoder {
            state,
            received: 0,
            max_body,
            max_trailer_bytes,
            trailers: Vec::new(),
            ext_len: 0,
        }
    }

    /// Whether the body is complete.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Body bytes decoded so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The trailer section of a chunked body once complete: header lines, each ending in CRLF (possibly empty).
    pub fn trailers(&self) -> &[u8] {
        &self.trailers
    }

    /// The connection closed: completes an until-close body; any other unfinished body is truncated (`false`).
    pub fn finish_on_close(&mut self) -> bool {
        if self.state == State::UntilClose {
            self.state = State::Done;
        }
        self.state == State::Done
    }

    /// Decodes from the start of `input`: returns how many bytes were consumed and at most one event.
    ///
    /// Call again with the rest after each `Data`; `End` (returned again on every later call, consuming nothing)
    /// means the body is complete and the following bytes belong to the next message. `(n, None)` means all of
    /// `input` was framing and more is needed.
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Option<BodyEvent<'a>>), Refusal> {
        let mut i = 0;
        while i < input.len() || self.state == State::Done {
            let b = match self.state {
                State::Done => return Ok((i, Some(BodyEvent::End))),
                State::Length { remaining } => {
                    let n = usize::try_from(remaining).unwrap_or(usize::MAX).min(input.len() - i);
                    let left = remaining - n as u64;
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Length { remaining: left }
                    };
                    return self.data(i, &input[i..i + n]);
                }
                State::UntilClose => return self.data(i, &input[i..]),
                State::Data { remaining } => {
                    let n = usize::try_from(remaining).unwrap_or(usize::MAX).min(input.len() - i);
                    let left = remaining - n as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining: left }
                    };
                    return Ok((i + n, Some(BodyEvent::Data(&input[i..i + n]))));
                }
                _ => input[i],
            };
            i += 1;
            self.state = self.chunk_byte(b)?;
        }
        Ok((i, None))
    }

    fn data<'a>(&mut self, at: usize, data: &'a [u8]) -> Result<(usize, Option<BodyEvent<'a>>), Refusal> {
        self.received += data.len() as u64;
        if self.received > self.max_body {
            return Err(Refusal::BodyTooLarge);
        }
        Ok((at + data.len(), Some(BodyEvent::Data(data))))
    }

    /// One byte of chunk framing (size lines, CRLF after data, trailers).
    fn chunk_byte(&mut self, b: u8) -> Result<State, Refusal> {
        Ok(match (self.state, b) {
            (State::Size { value, digits }, _) if b.is_ascii_hexdigit() => {
                if digits >= 16 {
                    return Err(Refusal::BadChunk);
                }
                let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                let value = value
                    .checked_mul(16)
                    .and_then(|v| v.checked_add(d))
                    .ok_or(Refusal::BadChunk)?;
                State::Size {
                    value,
                    digits: digits + 1,
                }
            }
            (State::Size { digits: 0, .. }, _) => return Err(Refusal::BadChunk),
            (State::Size { value, .. } | State::SizeSpace { value }, b' ' | b'\t') => State::SizeSpace { value },
            (State::Size { value, .. } | State::SizeSpace { value }, b';') => {
                self.ext_len = 0;
                State::Ext { value }
            }
            (State::Size { value, .. } | State::SizeSpace { value } | State::Ext { value }, b'\r') => {
                State::SizeLf { value }
            }
            (State::Ext { value }, _) => {
                self.ext_len += 1;
                if self.ext_len > 4096 || b == b'\n' || b == 0x7f || (b < 0x20 && b != b'\t') {
                    return Err(Refusal::BadChunk);
                }
                State::Ext { value }
            }
            (State::SizeLf { value }, b'\n') => {
                if value == 0 {
                    State::TrailerLineStart
                } else {
                    if self.received.saturating_add(value) > self.max_body {
                        return Err(Refusal::BodyTooLarge);
                    }
                    self.received += value;
                    State::Data { remaining: value }
                }
            }
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size { value: 0, digits: 0 },
            (State::TrailerLineStart, b'\r') => State::EndLf,
            (State::EndLf, b'\n') => {
                self.check_trailers()?;
                State::Done
            }
            (State::TrailerLineStart, b' ' | b'\t') => return Err(Refusal::BadTrailer),
            (State::TrailerLineStart | State::TrailerLine, b'\n') => return Err(Refusal::BadTrailer),
            (State::TrailerLine, b'\r') => {
                self.push_trailer(b)?;
                State::TrailerLf
            }
            (State::TrailerLineStart | State::TrailerLine, _) => {
                self.push_trailer(b)?;
                State::TrailerLine
            }
            (State::TrailerLf, b'\n') => {
                self.push_trailer(b)?;
                State::TrailerLineStart
            }
            (State::TrailerLf | State::EndLf, _) => return Err(Refusal::BadTrailer),
            _ => return Err(Refusal::BadChunk),
        })
    }

    fn push_trailer(&mut self, b: u8) -> Result<(), Refusal> {
        if self.trailers.len() >= self.max_trailer_bytes {
            return Err(Refusal::BadTrailer);
        }
        self.trailers.push(b);
        Ok(())
    }

    /// Every trailer line is `token ":" value` with no control characters in the value.
    fn check_trailers(&self) -> Result<(), Refusal> {
        for line in self.trailers.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let line = line.strip_suffix(b"\r").ok_or(Refusal::BadTrailer)?;
            let colon = line.iter().position(|&b| b == b':').ok_or(Refusal::BadTrailer)?;
            let (name, value) = (&line[..colon], &line[colon + 1..]);
            if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
                return Err(Refusal::BadTrailer);
            }
            if value.iter().any(|&b| b == 0x7f || (b < 0x20 && b != b'\t')) {
                return Err(Refusal::BadTrailer);
            }
        }
        Ok(())
    }
}

/// RFC 9110 token character.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Writes `data` as one chunk (nothing for empty data: an empty chunk would end the body).
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    use std::io::Write;
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Writes the last chunk and the trailer section (`trailers`: header lines each ending in CRLF).
pub fn encode_last_chunk(trailers: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n");
    out.extend_from_slice(trailers);
    out.extend_from_slice(b"\r\n");
}

/// How the proxy writes a body it decoded: as is, or re-chunked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyEncoder {
    /// Bytes as they are (Content-Length, until close, or no body).
    Identity,
    /// Chunked (trailers passed through).
    Chunked,
}

impl BodyEncoder {
    /// Writes body bytes.
    pub fn data(self, data: &[u8], out: &mut Vec<u8>) {
        match self {
            BodyEncoder::Identity => out.extend_from_slice(data),
            BodyEncoder::Chunked => encode_chunk(data, out),
        }
    }

    /// Writes the end of the body.
    pub fn end(self, trailers: &[u8], out: &mut Vec<u8>) {
        if self == BodyEncoder::Chunked {
            encode_last_chunk(trailers, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{pattern, Rng};

    /// Feeds `pieces` and collects the body; returns (body, bytes consumed in total, done).
    fn run(
        decoder: &mut BodyDecoder,
        input: &[u8],
        piece: &mut dyn FnMut() -> usize,
    ) -> Result<(Vec<u8>, usize), Refusal> {
        let mut body = Vec::new();
        let mut offered = 0;
        let mut consumed = 0;
        // The caller keeps unconsumed bytes and offers them again with more.
        while !decoder.is_done() && consumed < input.len() {
            offered = (offered.max(consumed) + piece()).min(input.len());
            loop {
                let (n, ev) = decoder.decode(&input[consumed..offered])?;
                consumed += n;
                match ev {
                    Some(BodyEvent::Data(d)) => body.extend_from_slice(d),
                    Some(BodyEvent::End) => break,
                    None => break,
                }
                if consumed == offered {
                    break;
                }
            }
        }
        Ok((body, consumed))
    }

    fn chunked(body: &[u8], sizes: &mut dyn FnMut() -> usize, trailers: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < body.len() {
            let n = sizes().clamp(1, body.len() - at);
            encode_chunk(&body[at..at + n], &mut out);
            at += n;
        }
        encode_last_chunk(trailers, &mut out);
        out
    }

    #[test]
    fn content_length_one_mebibyte_in_one_byte_and_random_pieces() {
        let body = pattern(1 << 20);
        let mut input = body.clone();
        input.extend_from_slice(b"GET /next");
        for random in [false, true] {
            let mut rng = Rng::new(7);
            let mut d = BodyDecoder::new(BodyFraming::Length(body.len() as u64), u64::MAX, 0);
            let mut piece = || if random { rng.below(3000) + 1 } else { 1 };
            let (got, consumed) = run(&mut d, &input, &mut piece).unwrap();
            assert!(d.is_done());
            assert_eq!(consumed, body.len(), "stops at the end of the body");
            assert!(got == body, "byte-exact");
        }
    }

    #[test]
    fn chunked_one_mebibyte_in_one_byte_and_random_pieces() {
        let body = pattern(1 << 20);
        let mut rng = Rng::new(11);
        let mut input = chunked(&body, &mut || rng.below(5000) + 1, b"X-Sum: 1\r\n");
        let framed = input.len();
        input.extend_from_slice(b"GET /next");
        for random in [false, true] {
            let mut rng = Rng::new(3);
            let mut d = BodyDecoder::new(BodyFraming::Chunked, u64::MAX, 1024);
            let mut piece = || if random { rng.below(3000) + 1 } else { 1 };
            let (got, consumed) = run(&mut d, &input, &mut piece).unwrap();
            assert!(d.is_done());
            assert_eq!(consumed, framed);
            assert!(got == body, "byte-exact");
            assert_eq!(d.trailers(), b"X-Sum: 1\r\n");
            assert_eq!(d.received(), body.len() as u64);
        }
    }

    #[test]
    fn chunk_extensions_and_whitespace() {
        let input = b"5;name=\"v\";x\r\nhello\r\n6 ; y=1\r\n world\r\nA\r\n0123456789\r\n0\r\n\r\n";
        let mut d = BodyDecoder::new(BodyFraming::Chunked, u64::MAX, 0);
        let (got, n) = run(&mut d, input, &mut || 1000).unwrap();
        assert_eq!(got, b"hello world0123456789");
        assert_eq!(n, input.len());
    }

    #[test]
    fn bad_chunks_refused() {
        let cases: &[(&[u8], Refusal)] = &[
            (b"x\r\n", Refusal::BadChunk),
            (b"\r\n", Refusal::BadChunk),
            (b"-1\r\n", Refusal::BadChunk),
            (b"+5\r\nhello\r\n", Refusal::BadChunk),
            (b"0x5\r\nhello\r\n", Refusal::BadChunk),
            (b"5 5\r\nhello\r\n", Refusal::BadChunk),
            (b"5\nhello\r\n", Refusal::BadChunk),
            (b"5\r\nhelloXX", Refusal::BadChunk),
            (b"5\r\nhello\n0\r\n\r\n", Refusal::BadChunk),
            (b"5\r\nhello\r\r", Refusal::BadChunk),
            (b"10000000000000000\r\n", Refusal::BadChunk),
            (b"00000000000000001\r\n", Refusal::BadChunk),
            (b"5;a\x00\r\n", Refusal::BadChunk),
            (b"5;a\nb\r\n", Refusal::BadChunk),
            (b"0\r\nX: a\n\r\n", Refusal::BadTrailer),
            (b"0\r\n X: a\r\n\r\n", Refusal::BadTrailer),
            (b"0\r\nno colon\r\n\r\n", Refusal::BadTrailer),
            (b"0\r\nX: a\x01\r\n\r\n", Refusal::BadTrailer),
            (b"0\r\n\rx", Refusal::BadTrailer),
        ];
        for (input, want) in cases {
            let mut d = BodyDecoder::new(BodyFraming::Chunked, u64::MAX, 64);
            let got = run(&mut d, input, &mut || 1).map(|_| ());
            assert_eq!(got, Err(*want), "{:?}", String::from_utf8_lossy(input));
        }
        let mut d = BodyDecoder::new(BodyFraming::Chunked, u64::MAX, 8);
        assert_eq!(
            run(&mut d, b"0\r\nX-Long: 123456\r\n\r\n", &mut || 1).map(|_| ()),
            Err(Refusal::BadTrailer)
        );
    }

    #[test]
    fn body_limits() {
        let mut d = BodyDecoder::new(BodyFraming::Chunked, 10, 0);
        assert_eq!(
            run(&mut d, b"5\r\nhello\r\n6\r\n", &mut || 1).map(|_| ()),
            Err(Refusal::BodyTooLarge)
        );
        let mut d = BodyDecoder::new(BodyFraming::Chunked, 10, 0);
        assert!(run(&mut d, b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n", &mut || 1).is_ok());
        let mut d = BodyDecoder::new(BodyFraming::UntilClose, 10, 0);
        assert_eq!(run(&mut d, &[0; 11], &mut || 1).map(|_| ()), Err(Refusal::BodyTooLarge));
    }

    #[test]
    fn until_close_and_truncation() {
        let mut d = BodyDecoder::new(BodyFraming::UntilClose, u64::MAX, 0);
        assert_eq!(d.decode(b"abc").unwrap(), (3, Some(BodyEvent::Data(b"abc"))));
        assert!(d.finish_on_close());
        let mut d = BodyDecoder::new(BodyFraming::Length(5), u64::MAX, 0);
        assert_eq!(d.decode(b"abc").unwrap(), (3, Some(BodyEvent::Data(b"abc"))));
        assert!(!d.finish_on_close());
        let mut d = BodyDecoder::new(BodyFraming::None, u64::MAX, 0);
        assert_eq!(d.decode(b"").unwrap(), (0, Some(BodyEvent::End)));
        assert_eq!(d.decode(b"next").unwrap(), (0, Some(BodyEvent::End)));
    }

    #[test]
    fn encoder_round_trip() {
        let mut out = Vec::new();
        BodyEncoder::Chunked.data(b"hello", &mut out);
        BodyEncoder::Chunked.data(b"", &mut out);
        BodyEncoder::Chunked.data(&[b'x'; 300], &mut out);
        BodyEncoder::Chunked.end(b"", &mut out);
        assert!(out.starts_with(b"5\r\nhello\r\n12c\r\nxxx"));
        assert!(out.ends_with(b"xx\r\n0\r\n\r\n"));
        let mut d = BodyDecoder::new(BodyFraming::Chunked, u64::MAX, 0);
        let (got, _) = run(&mut d, &out, &mut || 7).unwrap();
        assert_eq!(got.len(), 305);
    }
}
