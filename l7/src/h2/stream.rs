//! One stream of an [`super::H2Front`]: its request body towards the proxy (with flow-control credit returned as
//! the proxy consumes it) and the proxy's response towards the client (buffered up to `max_send_buffer`, sent
//! as the client's window allows).

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use ::h2::server::SendResponse;
use ::h2::{Reason, RecvStream, SendStream};
use bytes::{Bytes, BytesMut};
use http::HeaderMap;

use super::ready::StreamWake;
use super::request::{frame_body, last_chunk, ReqFraming};
use super::response::{ResponseParser, Step};
use super::{H2Event, H2Limits, StreamRef};

/// What became of a stream after a poll.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Open,
    /// Both directions are over: forget it.
    Done,
    /// The client reset it (or h2 did, for a client error); `unanswered`: before the response was complete.
    Reset {
        unanswered: bool,
    },
}

pub(crate) struct Stream {
    /// Request body source; kept after the end until every byte was consumed (for flow-control credit).
    recv: Option<RecvStream>,
    framing: ReqFraming,
    /// Body bytes received (checked against Content-Length).
    received: u64,
    /// All request bytes were delivered as events.
    req_done: bool,
    /// Delivered events not yet consumed by the proxy: (framed bytes left, DATA bytes to release).
    unreleased: VecDeque<(usize, usize)>,
    /// Until the response head is sent.
    respond: Option<SendResponse<Bytes>>,
    send: Option<SendStream<Bytes>>,
    parser: ResponseParser,
    /// Decoded response body bytes waiting for flow-control credit.
    out: BytesMut,
    /// The response body is complete; its trailers (empty if none) follow `out`.
    end: Option<HeaderMap>,
    /// END_STREAM or RST_STREAM was handed to h2.
    finished: bool,
    /// [`super::H2Front::end_response`] was called.
    proxy_done: bool,
    /// Response bytes were refused (the send buffer was full): `Writable` once some were sent.
    blocked: bool,
    /// This stream's waker (see [`super::ready`]): it is polled when woken.
    wake: Arc<StreamWake>,
    waker: Waker,
}

impl Stream {
    pub fn new(
        recv: Option<RecvStream>,
        framing: ReqFraming,
        respond: SendResponse<Bytes>,
        is_head: bool,
        limits: &H2Limits,
        (wake, waker): (Arc<StreamWake>, Waker),
    ) -> Self {
        Stream {
            wake,
            waker,
            req_done: recv.is_none(),
            recv,
            framing,
            received: 0,
            unreleased: VecDeque::new(),
            respond: Some(respond),
            send: None,
            parser: ResponseParser::new(is_head, limits.max_response_head_bytes, limits.max_trailer_bytes),
            out: BytesMut::new(),
            end: None,
            finished: false,
            proxy_done: false,
            blocked: false,
        }
    }

    /// The stream has work from the front's side (response bytes, its end, consumed request bytes): poll it.
    pub fn wake(&self) {
        self.wake.wake_by_ref();
    }

    /// Request body events, reset detection, response data; returns whether anything moved. `h2` wakes the
    /// stream when it has more for it.
    pub fn poll(&mut self, id: StreamRef, events: &mut VecDeque<H2Event>) -> (bool, Outcome) {
        self.wake.polling();
        let waker = self.waker.clone();
        let cx = &mut Context::from_waker(&waker);
        let mut progress = false;
        if !self.req_done {
            match self.poll_request(cx, id, events) {
                Ok(p) => progress |= p,
                Err(()) => return (true, self.reset_outcome()),
            }
        }
        if !self.finished {
            let reset = match (self.send.as_mut(), self.respond.as_mut()) {
                (Some(s), _) => s.poll_reset(cx),
                (None, Some(r)) => r.poll_reset(cx),
                (None, None) => Poll::Pending,
            };
            if reset.is_ready() {
                return (true, self.reset_outcome());
            }
            if self.flush() {
                progress = true;
                if std::mem::take(&mut self.blocked) {
                    events.push_back(H2Event::Writable { stream: id });
                }
            }
        }
        let done = self.finished && ((self.req_done && self.unreleased.is_empty()) || self.proxy_done);
        (progress, if done { Outcome::Done } else { Outcome::Open })
    }

    fn reset_outcome(&self) -> Outcome {
        Outcome::Reset {
            unanswered: !self.finished,
        }
    }

    /// Polls request DATA and trailers into events. `Err`: the stream was reset.
    fn poll_request(
        &mut self,
        cx: &mut Context<'_>,
        id: StreamRef,
        events: &mut VecDeque<H2Event>,
    ) -> Result<bool, ()> {
        let Some(recv) = self.recv.as_mut() else {
            return Ok(false);
        };
        let mut progress = false;
        loop {
            match recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    progress = true;
                    self.received += data.len() as u64;
                    if matches!(self.framing, ReqFraming::Length(n) if self.received > n) {
                        // h2 checks this too; never let the proxy see more than announced.
                        self.reset(Reason::PROTOCOL_ERROR);
                        return Err(());
                    }
                    if data.is_empty() {
                        continue;
                    }
                    let framed = frame_body(self.framing, &data);
                    self.unreleased.push_back((framed.len(), data.len()));
                    events.push_back(H2Event::RequestBody {
                        stream: id,
                        data: framed,
                    });
                }
                Poll::Ready(Some(Err(_))) => return Err(()),
                Poll::Ready(None) => match recv.poll_trailers(cx) {
                    Poll::Ready(Ok(trailers)) => {
                        if matches!(self.framing, ReqFraming::Length(n) if self.received != n) {
                            self.reset(Reason::PROTOCOL_ERROR);
                            return Err(());
                        }
                        if self.framing == ReqFraming::Chunked {
                            let data = last_chunk(trailers.as_ref());
                            self.unreleased.push_back((data.len(), 0));
                            events.push_back(H2Event::RequestBody { stream: id, data });
                        }
                        events.push_back(H2Event::RequestEnd { stream: id });
                        self.req_done = true;
                        return Ok(true);
                    }
                    Poll::Ready(Err(_)) => return Err(()),
                    Poll::Pending => return Ok(progress),
                },
                Poll::Pending => return Ok(progress),
            }
        }
    }

    /// The proxy consumed `n` framed request bytes.
    pub fn request_bytes_taken(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.unreleased.front_mut() else {
                return;
            };
            let k = n.min(front.0);
            front.0 -= k;
            n -= k;
            if front.0 == 0 {
                let release = front.1;
                self.unreleased.pop_front();
                if let Some(r) = self.recv.as_mut() {
                    let _ = r.flow_control().release_capacity(release);
                }
            }
        }
    }

    /// Returns the credit of everything not consumed (the stream is being dropped).
    pub fn release_all(&mut self) {
        let total: usize = self.unreleased.drain(..).map(|(_, d)| d).sum();
        if let Some(r) = self.recv.as_mut() {
            if total > 0 {
                let _ = r.flow_control().release_capacity(total);
            }
        }
    }

    /// Response bytes from the proxy: returns (bytes taken, whether the response was refused as bad).
    pub fn feed(&mut self, data: &[u8], max_buffer: usize) -> (usize, bool) {
        let mut taken = 0;
        while taken < data.len() {
            if self.finished || self.end.is_some() {
                // After the end of the one response: nothing expects these bytes.
                return (data.len(), false);
            }
            let room = if self.parser.head_done() {
                max_buffer.saturating_sub(self.out.len())
            } else {
                usize::MAX
            };
            if room == 0 {
                break;
            }
            let limit = (data.len() - taken).min(room);
            match self.parser.step(&data[taken..taken + limit]) {
                Ok((n, step)) => {
                    taken += n;
                    match step {
                        Step::Interim(resp) => {
                            if let Some(respond) = self.respond.as_mut() {
                                // Refused only once the stream is over: nothing then waits for it.
                                let _ = respond.send_informational(resp);
                            }
                        }
                        Step::Head(resp, body) => self.send_head(resp, body),
                        Step::Data(d) => self.out.extend_from_slice(d),
                        Step::End(trailers) => self.end = Some(trailers),
                        Step::NeedMore if n == 0 => break,
                        Step::NeedMore => {}
                    }
                }
                Err(_) => {
                    self.fail();
                    return (data.len(), true);
                }
            }
        }
        if !self.finished && self.end.is_none() && self.parser.head_done() {
            // A Content-Length body reports its end on the next call, with no input.
            if let Ok((_, Step::End(trailers))) = self.parser.step(&[]) {
                self.end = Some(trailers);
            }
        }
        self.blocked |= taken < data.len();
        (taken, false)
    }

    fn send_head(&mut self, resp: http::Response<()>, body: bool) {
        let Some(mut respond) = self.respond.take() else {
            return;
        };
        match respond.send_response(resp, !body) {
            Ok(send) if body => self.send = Some(send),
            _ => {
                self.finished = true;
                self.end = Some(HeaderMap::new());
            }
        }
    }

    /// The proxy is done: returns whether the response was unfinished (answered 502 or reset).
    pub fn end_response(&mut self, complete: bool) -> bool {
        self.proxy_done = true;
        if self.finished || self.end.is_some() {
            return false;
        }
        if complete && self.parser.head_done() && self.parser.finish() {
            self.end = Some(HeaderMap::new());
            return false;
        }
        self.fail();
        true
    }

    /// A bad or unfinished response: 502 if no head was sent, else RST_STREAM(INTERNAL_ERROR).
    fn fail(&mut self) {
        if let Some(mut respond) = self.respond.take() {
            let mut resp = http::Response::new(());
            *resp.status_mut() = http::StatusCode::BAD_GATEWAY;
            let _ = respond.send_response(resp, true);
        } else {
            self.reset(Reason::INTERNAL_ERROR);
        }
        self.out.clear();
        self.finished = true;
        self.end = Some(HeaderMap::new());
    }

    fn reset(&mut self, reason: Reason) {
        if let Some(s) = self.send.as_mut() {
            s.send_reset(reason);
        } else if let Some(r) = self.respond.as_mut() {
            r.send_reset(reason);
        }
        self.finished = true;
    }

    /// Hands buffered body bytes to h2 as far as the client's windows allow, then the end of the stream.
    fn flush(&mut self) -> bool {
        let Some(send) = self.send.as_mut() else {
            return false;
        };
        let mut progress = false;
        if !self.out.is_empty() {
            send.reserve_capacity(self.out.len());
            let n = send.capacity().min(self.out.len());
            if n > 0 {
                let chunk: Bytes = self.out.split_to(n).freeze();
                let last = self.out.is_empty() && self.end.as_ref().is_some_and(HeaderMap::is_empty);
                let _ = send.send_data(chunk, last);
                self.finished = last;
                progress = true;
            }
        }
        if self.out.is_empty() && !self.finished {
            if let Some(trailers) = self.end.take() {
                let _ = if trailers.is_empty() {
                    send.send_data(Bytes::new(), true)
                } else {
                    send.send_trailers(trailers)
                };
                self.end = Some(HeaderMap::new());
                self.finished = true;
                progress = true;
            }
        }
        progress
    }
}
