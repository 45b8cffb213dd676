//! The client side of [`HttpProxy`]: request heads, the start of an exchange, request bodies.

use super::*;
use crate::h2::upgrade::{h2c_upgrade, H2cUpgrade};

impl HttpProxy {
    /// Appends head bytes; returns how many of `data` belong to the head so far.
    pub(super) fn read_head(&mut self, now: Instant, data: &[u8]) -> usize {
        let max = self.cfg.limits.max_header_bytes;
        if self.head.is_empty() && self.exchange.is_none() {
            self.client_deadline = Some((now + secs(self.cfg.limits.client_header_timeout_s), Timer::ClientHeader));
        }
        let take = data.len().min(max - self.head.len());
        let before = self.head.len();
        self.head.extend_from_slice(&data[..take]);
        match self.scanner.scan(&self.head) {
            Ok(Some(end)) => {
                self.head.truncate(end);
                self.head_end = Some(end);
                end - before
            }
            Ok(None) => {
                if self.head.len() >= max {
                    self.refuse_head(Refusal::HeadTooLarge);
                }
                take
            }
            Err(r) => {
                self.refuse_head(r);
                take
            }
        }
    }

    /// Refuses a bad head now, or after the exchange in flight (its response comes first).
    pub(super) fn refuse_head(&mut self, r: Refusal) {
        if self.exchange.is_some() {
            self.head_error = Some(r);
        } else {
            self.refuse(r);
        }
    }

    /// Serves a complete buffered head once no exchange is in flight.
    pub(super) fn advance(&mut self, now: Instant) {
        if self.closed || self.exchange.is_some() {
            return;
        }
        if let Some(r) = self.head_error.take() {
            return self.refuse(r);
        }
        let Some(end) = self.head_end.take() else {
            if !self.head.is_empty() && self.client_deadline.is_none_or(|(_, t)| t == Timer::ClientIdle) {
                self.client_deadline = Some((now + secs(self.cfg.limits.client_header_timeout_s), Timer::ClientHeader));
            }
            return;
        };
        let skip = self.scanner.skip().min(end);
        let parsed = parse_request(&self.head[skip..end]);
        self.head.clear();
        self.scanner = HeadScanner::default();
        let h2c = std::mem::take(&mut self.h2c);
        match parsed {
            Ok(req) => match h2c.then(|| h2c_upgrade(&req)).flatten() {
                Some(up) => self.switch_to_h2c(up),
                None => self.start_exchange(now, req),
            },
            Err(r) => self.refuse(r),
        }
    }

    /// Offers HTTP/2 to the connection's first request: an `Upgrade: h2c` the front can take up (see
    /// [`crate::h2::upgrade`]) ends the proxy's work with [`Action::UpgradeH2c`].
    pub fn offer_h2c(&mut self) {
        self.h2c = self.exchange.is_none() && self.next_upstream == 0 && !self.closed;
    }

    fn switch_to_h2c(&mut self, up: H2cUpgrade) {
        self.client_deadline = None;
        self.closed = true;
        self.tunnelled = true; // the bytes after the head are not consumed: they are HTTP/2
        self.push(Action::UpgradeH2c(Box::new(up)));
    }

    pub(super) fn start_exchange(&mut self, now: Instant, mut req: RequestHead) {
        self.client_deadline = None;
        self.request_started = Some(now);
        if self.cfg.access_log {
            self.current = Some((req.method.clone(), req.target.clone(), req.host.clone(), now));
        }
        let mut exchange = Exchange {
            version: req.version,
            is_head: req.is_head(),
            keep_alive: req.keep_alive && !self.client_eof,
            websocket: false,
            sent_continue: false,
            sticky_server: None,
            affinity: None,
            response_started: false,
            request_done: false,
            idempotent: matches!(
                req.method.as_str(),
                "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
            ),
            attempts: 1,
        };
        let max_body = self.cfg.max_body();
        if let BodyFraming::Length(n) = req.framing {
            if n > max_body {
                return self.refuse(Refusal::BodyTooLarge);
            }
        }
        let cfg = Arc::clone(&self.cfg);
        let group = match cfg.rules.route(&req.host, req.path()) {
            RuleAction::Forward(g) => *g,
            action => {
                let keep_alive = exchange.keep_alive && req.framing == BodyFraming::None;
                let (status, location, ctype, body) = match action {
                    RuleAction::Redirect(rd) => (
                        rd.status,
                        Some(cfg.rules.location(rd, &req.host, &req.target)),
                        "text/plain",
                        &[][..],
                    ),
                    RuleAction::Fixed(f) => (f.status, None, f.content_type.as_str(), f.body.as_bytes()),
                    RuleAction::Forward(_) => unreachable!("handled above"),
                };
                let extra: Vec<(&str, &[u8])> = location.iter().map(|l| ("Location", l.as_bytes())).collect();
                let body = if exchange.is_head { &[][..] } else { body };
                write_local_response(status, &extra, ctype, body, keep_alive, &mut self.to_client);
                self.answered(status, true);
                return self.end_of_local_answer(now, keep_alive);
            }
        };
        if let Some(sticky) = &cfg.sticky {
            exchange.sticky_server = match sticky.mode {
                StickyMode::Insert => cfg.codec.inserted_server(&req.headers, &sticky.cookie),
                StickyMode::Rewrite => cfg.codec.strip_rewritten(&mut req.headers, &sticky.cookie),
            };
        }
        exchange.affinity = cfg.hash.as_ref().and_then(|h| h.key_of(&req.headers));
        exchange.websocket = req.websocket;
        // The upstream connection: the idle one if it serves this group (and the sticky server, or was picked
        // for the same hash key), else a new one.
        let (sticky_server, affinity) = (exchange.sticky_server, exchange.affinity);
        let reuse = self.upstream.as_ref().is_some_and(|u| {
            u.connected
                && u.group == group
                && sticky_server.is_none_or(|s| u.server == Some(s))
                && (sticky_server.is_some() || u.affinity == affinity)
        });
        if reuse {
            self.upstream_deadline = Some((
                now + secs(cfg.limits.upstream_response_timeout_s),
                Timer::UpstreamResponse,
            ));
        } else {
            self.let_go_of_upstream();
            let id = UpstreamId(self.next_upstream);
            self.next_upstream = self.next_upstream.wrapping_add(1);
            self.upstream = Some(Upstream {
                id,
                group,
                server: None,
                connected: false,
                affinity,
            });
            self.push(Action::ConnectUpstream {
                id,
                group,
                sticky_server,
                affinity,
            });
            self.upstream_deadline = Some((
                now + secs(cfg.limits.upstream_connect_timeout_s),
                Timer::UpstreamConnect,
            ));
        }
        let has_body = !matches!(req.framing, BodyFraming::None | BodyFraming::Length(0));
        if req.expect_continue && has_body {
            self.to_client.extend_from_slice(CONTINUE);
            exchange.sent_continue = true;
        }
        let client = ClientInfo {
            addr: self.client_addr,
            proto: cfg.scheme,
            cert_subject: self.client_cert.as_deref(),
        };
        write_upstream_request(&req, client, req.websocket, &mut self.to_upstream);
        if has_body {
            let encoder = if req.framing == BodyFraming::Chunked {
                BodyEncoder::Chunked
            } else {
                BodyEncoder::Identity
            };
            let trailers = cfg.limits.max_header_bytes;
            if reuse {
                // Otherwise the body timer starts once the upstream is connected: until then xlb is not reading.
                self.client_deadline = Some((now + secs(cfg.limits.client_body_timeout_s), Timer::ClientBody));
            }
            self.request = RequestPhase::Body {
                decoder: BodyDecoder::new(req.framing, max_body, trailers),
                encoder,
            };
        } else {
            exchange.request_done = true;
        }
        self.response = ResponsePhase::Head;
        self.resp_head.clear();
        self.resp_scanner = HeadScanner::default();
        self.exchange = Some(exchange);
    }

    /// Request body bytes; returns how many were consumed.
    pub(super) fn read_body(&mut self, now: Instant, data: &[u8]) -> usize {
        let RequestPhase::Body { decoder, encoder } = &mut self.request else {
            return 0;
        };
        let mut used = 0;
        let result = loop {
            match decoder.decode(&data[used..]) {
                Ok((n, Some(BodyEvent::Data(d)))) => {
                    encoder.data(d, &mut self.to_upstream);
                    used += n;
                }
                Ok((n, Some(BodyEvent::End))) => {
                    used += n;
                    encoder.end(decoder.trailers(), &mut self.to_upstream);
                    break Ok(true);
                }
                Ok((n, None)) => {
                    used += n;
                    break Ok(false);
                }
                Err(r) => break Err(r),
            }
            if used == data.len() && !decoder.is_done() {
                break Ok(false);
            }
        };
        match result {
            Ok(true) => {
                self.request = RequestPhase::Head;
                self.client_deadline = None;
                if let Some(e) = self.exchange.as_mut() {
                    e.request_done = true;
                }
            }
            Ok(false) => {
                self.client_deadline = Some((now + secs(self.cfg.limits.client_body_timeout_s), Timer::ClientBody));
                if matches!(self.upstream_deadline, Some((_, Timer::UpstreamResponse))) {
                    // The server waits for the body: its response timer runs from the last byte sent.
                    let at = now + secs(self.cfg.limits.upstream_response_timeout_s);
                    self.upstream_deadline = Some((at, Timer::UpstreamResponse));
                }
            }
            Err(r) => {
                if self.exchange.as_ref().is_some_and(|e| e.response_started) {
                    self.events.push_back(Event::ClientRefused(r));
                    self.events.push_back(Event::Aborted);
                    self.close_all();
                } else {
                    self.refuse(r);
                }
            }
        }
        used
    }
}
