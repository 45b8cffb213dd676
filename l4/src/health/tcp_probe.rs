//! The TCP side of `tcp` and `http` probes: a client that opens one connection, never retransmits, and
//! tears the connection down with a RST once the verdict is known.
//!
//! - `tcp`: SYN; a SYN-ACK acknowledging it is success (then RST, seq = their ack); a RST acknowledging it is
//!   failure (connection refused).
//! - `http`: SYN; on SYN-ACK, one segment carrying the ACK and the request; in-order data is acknowledged
//!   and fed to the status-line reader (out-of-order data only draws a duplicate ACK); the status decides,
//!   then RST. A RST, a FIN before the status line, or a response that is not HTTP/1.x is failure.
//!
//! A lost segment is not recovered: the probe then times out, which is what a health check should report.
//! The one exception costs nothing: a retransmitted SYN-ACK before any response means our request was
//! lost, so it is sent again.

use super::http::{Status, StatusLine};
use xlb_stack::wire::{TcpFlags, TcpHeader};

use super::packets::WINDOW;
use super::Failure;

/// What the probe checks once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The handshake alone.
    Connect,
    /// An HTTP exchange; `status_ok` judges the status code.
    Http,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// SYN sent.
    SynSent,
    /// SYN-ACK received (http only): the request is sent, the response read.
    Established { rcv_nxt: u32, status: StatusLine },
}

/// One TCP probe connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TcpProbe {
    /// Our initial sequence number.
    pub isn: u32,
    /// The next sequence number we send.
    pub snd_nxt: u32,
    state: State,
    owe_request: bool,
    owe_ack: bool,
}

/// The effect of a received segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Not acceptable for this connection (wrong ack, out-of-window RST...): no change.
    Ignored,
    /// Accepted; the probe goes on (it may owe a segment: see [`TcpProbe::poll_segment`]).
    Pending,
    /// The verdict. `teardown`: the server holds a connection we must reset (with seq = `snd_nxt`).
    Done {
        result: Result<(), Failure>,
        teardown: bool,
    },
}

/// A segment the probe wants sent (addresses come from the target).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment<'a> {
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    pub payload: &'a [u8],
}

impl TcpProbe {
    /// A probe whose SYN (see [`TcpProbe::syn`]) carries `isn`.
    pub fn new(isn: u32) -> Self {
        TcpProbe {
            isn,
            snd_nxt: isn.wrapping_add(1),
            state: State::SynSent,
            owe_request: false,
            owe_ack: false,
        }
    }

    /// The opening SYN.
    pub fn syn(&self) -> Segment<'static> {
        Segment {
            seq: self.isn,
            ack: 0,
            flags: TcpFlags::SYN,
            payload: &[],
        }
    }

    /// Whether a quoted sequence number (from an ICMP error) is one we sent.
    pub fn sent_seq(&self, seq: u32) -> bool {
        seq.wrapping_sub(self.isn) <= self.snd_nxt.wrapping_sub(self.isn)
    }

    /// Whether the server holds a connection (it sent a SYN-ACK we accepted).
    pub fn connected(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    /// Handles a segment from the server (addresses, ports and checksum already checked). `status_ok` judges
    /// an HTTP status code.
    pub fn on_segment<T: AsRef<[u8]>>(
        &mut self,
        mode: Mode,
        seg: &TcpHeader<T>,
        status_ok: impl Fn(u16) -> bool,
    ) -> Step {
        match &mut self.state {
            State::SynSent => self.on_syn_sent(mode, seg),
            State::Established { rcv_nxt, status } => {
                if seg.flags().rst() {
                    // RFC 5961: a RST is believed only if it lands in the receive window.
                    if seg.seq().wrapping_sub(*rcv_nxt) < u32::from(WINDOW) {
                        return done(Err(Failure::Reset), false);
                    }
                    return Step::Ignored;
                }
                if seg.flags().contains(TcpFlags::SYN_ACK) {
                    // Our ACK and request were lost and the server repeats its SYN-ACK.
                    if status.is_empty() && seg.ack_number() == self.isn.wrapping_add(1) {
                        self.owe_request = true;
                        return Step::Pending;
                    }
                    return Step::Ignored;
                }
                let fin = seg.flags().fin();
                if seg.payload().is_empty() && !fin {
                    return Step::Pending; // a bare ACK of our request
                }
                if seg.seq() != *rcv_nxt {
                    self.owe_ack = true; // out of order or repeated: say what we expect
                    return Step::Pending;
                }
                *rcv_nxt = rcv_nxt
                    .wrapping_add(seg.payload().len() as u32)
                    .wrapping_add(u32::from(fin));
                match status.push(seg.payload()) {
                    Status::Code(code) if status_ok(code) => done(Ok(()), true),
                    Status::Code(code) => done(Err(Failure::BadStatus(code)), true),
                    Status::Invalid => done(Err(Failure::BadResponse), true),
                    Status::Incomplete if fin => done(Err(Failure::BadResponse), true),
                    Status::Incomplete => {
                        self.owe_ack = true;
                        Step::Pending
                    }
                }
            }
        }
    }

    fn on_syn_sent<T: AsRef<[u8]>>(&mut self, mode: Mode, seg: &TcpHeader<T>) -> Step {
        let acks_syn = seg.flags().ack() && seg.ack_number() == self.isn.wrapping_add(1);
        if !acks_syn {
            return Step::Ignored;
        }
        if seg.flags().rst() {
            return done(Err(Failure::Refused), false);
        }
        if !seg.flags().syn() {
            return Step::Ignored;
        }
        match mode {
            Mode::Connect => done(Ok(()), true),
            Mode::Http => {
                self.state = State::Established {
                    rcv_nxt: seg.seq().wrapping_add(1),
                    status: StatusLine::default(),
                };
                self.owe_request = true;
                Step::Pending
            }
        }
    }

    /// The segment the probe owes, if any: the request (with the ACK), else a bare ACK.
    pub fn poll_segment<'r>(&mut self, request: &'r [u8]) -> Option<Segment<'r>> {
        let State::Established { rcv_nxt, .. } = self.state else {
            return None;
        };
        if self.owe_request {
            self.owe_request = false;
            self.owe_ack = false;
            let seq = self.isn.wrapping_add(1);
            self.snd_nxt = seq.wrapping_add(request.len() as u32);
            return Some(Segment {
                seq,
                ack: rcv_nxt,
                flags: TcpFlags::ACK | TcpFlags::PSH,
                payload: request,
            });
        }
        if self.owe_ack {
            self.owe_ack = false;
            return Some(Segment {
                seq: self.snd_nxt,
                ack: rcv_nxt,
                flags: TcpFlags::ACK,
                payload: &[],
            });
        }
        None
    }

    /// Whether [`TcpProbe::poll_segment`] has something to send.
    pub fn owes(&self) -> bool {
        self.connected() && (self.owe_request || self.owe_ack)
    }
}

fn done(result: Result<(), Failure>, teardown: bool) -> Step {
    Step::Done { result, teardown }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment from the server (port 80 to our 40000) as received.
    fn seg(flags: TcpFlags, seq: u32, ack: u32, payload: &[u8]) -> TcpHeader<Vec<u8>> {
        let mut b = vec![0u8; 20];
        b[0..2].copy_from_slice(&80u16.to_be_bytes());
        b[2..4].copy_from_slice(&40000u16.to_be_bytes());
        b[4..8].copy_from_slice(&seq.to_be_bytes());
        b[8..12].copy_from_slice(&ack.to_be_bytes());
        b[12] = 5 << 4;
        b[13] = flags.bits();
        b.extend_from_slice(payload);
        TcpHeader::new_checked(b).unwrap()
    }

    fn ok2xx(code: u16) -> bool {
        (200..300).contains(&code)
    }

    #[test]
    fn connect_succeeds_on_syn_ack_acking_our_syn() {
        let mut p = TcpProbe::new(1000);
        assert_eq!(
            p.on_segment(Mode::Connect, &seg(TcpFlags::SYN_ACK, 7, 999, &[]), ok2xx),
            Step::Ignored,
            "wrong ack"
        );
        assert_eq!(
            p.on_segment(Mode::Connect, &seg(TcpFlags::SYN_ACK, 7, 1001, &[]), ok2xx),
            done(Ok(()), true)
        );
        assert_eq!(p.snd_nxt, 1001);
    }

    #[test]
    fn rst_refuses_only_when_it_acks_our_syn() {
        let mut p = TcpProbe::new(u32::MAX);
        assert_eq!(
            p.on_segment(Mode::Connect, &seg(TcpFlags::RST, 0, 0, &[]), ok2xx),
            Step::Ignored
        );
        assert_eq!(
            p.on_segment(Mode::Connect, &seg(TcpFlags::RST | TcpFlags::ACK, 0, 0, &[]), ok2xx),
            done(Err(Failure::Refused), false)
        );
    }

    #[test]
    fn http_exchange_tracks_sequence_numbers() {
        let mut p = TcpProbe::new(100);
        let req = b"GET / HTTP/1.0\r\n\r\n";
        assert_eq!(
            p.on_segment(Mode::Http, &seg(TcpFlags::SYN_ACK, 5000, 101, &[]), ok2xx),
            Step::Pending
        );
        assert!(p.owes());
        let s = p.poll_segment(req).unwrap();
        assert_eq!((s.seq, s.ack, s.flags), (101, 5001, TcpFlags::ACK | TcpFlags::PSH));
        assert_eq!(s.payload, req);
        assert_eq!(p.snd_nxt, 101 + req.len() as u32);
        assert!(p.poll_segment(req).is_none());
        // Out of order: duplicate ACK, nothing consumed.
        assert_eq!(
            p.on_segment(Mode::Http, &seg(TcpFlags::ACK, 5010, p.snd_nxt, b"xx"), ok2xx),
            Step::Pending
        );
        let dup = p.poll_segment(req).unwrap();
        assert_eq!((dup.ack, dup.flags), (5001, TcpFlags::ACK));
        assert_eq!(
            p.on_segment(Mode::Http, &seg(TcpFlags::ACK, 5001, p.snd_nxt, b"HTTP/1.1 2"), ok2xx),
            Step::Pending
        );
        assert_eq!(p.poll_segment(req).unwrap().ack, 5011);
        assert_eq!(
            p.on_segment(
                Mode::Http,
                &seg(TcpFlags::ACK, 5011, p.snd_nxt, b"04 No Content"),
                ok2xx
            ),
            done(Ok(()), true)
        );
    }

    #[test]
    fn http_fin_before_status_fails() {
        let mut p = TcpProbe::new(1);
        p.on_segment(Mode::Http, &seg(TcpFlags::SYN_ACK, 10, 2, &[]), ok2xx);
        p.poll_segment(b"GET");
        assert_eq!(
            p.on_segment(Mode::Http, &seg(TcpFlags::ACK | TcpFlags::FIN, 11, 5, b"HTTP"), ok2xx),
            done(Err(Failure::BadResponse), true)
        );
    }

    #[test]
    fn established_rst_must_be_in_window() {
        let mut p = TcpProbe::new(1);
        p.on_segment(Mode::Http, &seg(TcpFlags::SYN_ACK, 10, 2, &[]), ok2xx);
        assert_eq!(
            p.on_segment(Mode::Http, &seg(TcpFlags::RST, 10 + 5000, 0, &[]), ok2xx),
            Step::Ignored
        );
        assert_eq!(
            p.on_segment(Mode::Http, &seg(TcpFlags::RST, 11, 0, &[]), ok2xx),
            done(Err(Failure::Reset), false)
        );
    }

    #[test]
    fn repeated_syn_ack_resends_the_request() {
        let mut p = TcpProbe::new(1);
        p.on_segment(Mode::Http, &seg(TcpFlags::SYN_ACK, 10, 2, &[]), ok2xx);
        assert!(p.poll_segment(b"GET").is_some());
        assert_eq!(
            p.on_segment(Mode::Http, &seg(TcpFlags::SYN_ACK, 10, 2, &[]), ok2xx),
            Step::Pending
        );
        let again = p.poll_segment(b"GET").unwrap();
        assert_eq!((again.seq, again.payload), (2, &b"GET"[..]));
    }

    #[test]
    fn quoted_sequence_numbers() {
        let mut p = TcpProbe::new(u32::MAX - 1);
        assert!(p.sent_seq(u32::MAX - 1));
        assert!(!p.sent_seq(5));
        p.on_segment(Mode::Http, &seg(TcpFlags::SYN_ACK, 10, u32::MAX, &[]), ok2xx);
        p.poll_segment(b"GET /");
        assert!(p.sent_seq(2), "inside the request, across the wrap");
        assert!(!p.sent_seq(9));
    }
}
