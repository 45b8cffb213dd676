//! HTTP/2 between sessions: a front session's streams become sessions of their own (see `session::h2`). After
//! a front runs, the stage gives its streams' sessions what the client sent; after a stream session runs, the
//! stage gives its response to the front (as much as the stream's flow control takes) and, once the response is
//! over, ends the stream.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use xlb_stack::local::{route, StackContext};

use super::session::{Session, StreamWork};
use super::token::Token;
use super::{L7Stage, Slot};
use crate::proxy::HttpProxy;

impl L7Stage {
    /// Carries out what the front session `front` (out of its slot at `key`) asks for its streams.
    pub(super) fn dispatch_streams(
        &mut self,
        now: Instant,
        key: (u32, u32),
        front: &mut Session,
        cx: &mut StackContext<'_>,
    ) {
        for work in front.take_stream_work() {
            match work {
                StreamWork::Open { stream, head } => {
                    let index = self.free_slot();
                    let generation = self.slots[index as usize].generation;
                    let client: IpAddr = IpAddr::V4(*front.client_addr().ip());
                    let proxy = HttpProxy::new(front.proxy_config(), client, now);
                    let token = Token::Upstream { index, generation };
                    let mut child = front.new_stream(proxy, key, stream, token);
                    child.stream_push(&head, true);
                    self.slots[index as usize].session = Some(Box::new(child));
                    self.sessions += 1;
                    front.add_stream(stream, (index, generation));
                    self.touched.push(index);
                }
                StreamWork::Body { stream, data } => {
                    if let Some(child) = front.stream_session(stream).and_then(|k| self.session_at(k)) {
                        child.stream_push(&data, false);
                        self.touched.push(front.stream_session(stream).map_or(0, |k| k.0));
                    }
                }
                StreamWork::End { stream } => {
                    if let Some(k) = front.stream_session(stream) {
                        if let Some(child) = self.session_at(k) {
                            child.stream_end();
                            self.touched.push(k.0);
                        }
                    }
                }
                StreamWork::Reset { stream } => {
                    if let Some(k) = front.stream_session(stream) {
                        self.reset_stream_session(now, k, cx);
                        front.stream_done(now, stream, false);
                    }
                }
                StreamWork::Writable { stream } => {
                    // Its response was waiting for the client's window: it tries again.
                    if let Some((index, _)) = front.stream_session(stream) {
                        self.touched.push(index);
                    }
                }
            }
        }
        if front.is_done() {
            // The connection is gone: so are its streams.
            for k in front.stream_sessions() {
                self.reset_stream_session(now, k, cx);
            }
        }
    }

    /// Gives the response of the stream session `child` (out of its slot) to its front.
    pub(super) fn stream_to_front(&mut self, now: Instant, child: &mut Session, cx: &mut StackContext<'_>) {
        let Some((parent, stream)) = child.stream_of() else {
            return;
        };
        let Some(front) = self.session_at(parent) else {
            // The client connection is gone.
            if !child.is_done() {
                let links = cx.links;
                let source = move |server: Ipv4Addr| route(links, server).map(|r| r.source);
                child.stream_reset(&mut self.io(now, &source, cx.ports));
            }
            return;
        };
        // Any call into the front may have moved other streams too (their frames, their `Writable`): the front
        // runs next whenever it was called, even if this stream's bytes were all refused.
        let mut called = false;
        let mut moved = child.drain_stream_response(|data| {
            called = true;
            front.stream_response(stream, data)
        });
        moved |= called;
        let taken = child.take_stream_body_taken();
        if taken > 0 {
            front.stream_body_taken(stream, taken);
            moved = true;
        }
        let finished = child.stream_finished();
        if let Some(complete) = finished {
            if front.stream_session(stream).is_some() {
                front.stream_done(now, stream, complete);
                moved = true;
            }
        }
        if moved {
            self.touched.push(parent.0);
        }
        if finished.is_some() {
            let links = cx.links;
            let source = move |server: Ipv4Addr| route(links, server).map(|r| r.source);
            child.close_stream(&mut self.io(now, &source, cx.ports));
        }
    }

    /// Ends the stream session at `key` (the client reset the stream or went away).
    fn reset_stream_session(&mut self, now: Instant, key: (u32, u32), cx: &mut StackContext<'_>) {
        // Out of its slot for the reset (the stage is borrowed whole by it), then back.
        let Some(mut child) = self
            .slots
            .get_mut(key.0 as usize)
            .filter(|s| s.generation == key.1)
            .and_then(|s| s.session.take())
        else {
            return;
        };
        let links = cx.links;
        let source = move |server: Ipv4Addr| route(links, server).map(|r| r.source);
        child.stream_reset(&mut self.io(now, &source, cx.ports));
        self.slots[key.0 as usize].session = Some(child);
        self.touched.push(key.0);
    }

    /// The session at `key`, if it is still there.
    fn session_at(&mut self, key: (u32, u32)) -> Option<&mut Session> {
        self.slots
            .get_mut(key.0 as usize)
            .filter(|s| s.generation == key.1)
            .and_then(|s| s.session.as_deref_mut())
    }

    /// A free slot's index (a new one if none is free).
    pub(super) fn free_slot(&mut self) -> u32 {
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    session: None,
                });
                (self.slots.len() - 1) as u32
            }
        }
    }
}
