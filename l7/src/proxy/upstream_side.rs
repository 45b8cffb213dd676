//! The upstream side of [`HttpProxy`]: response heads, response bodies, the end of an exchange.

use super::*;

impl HttpProxy {
    pub(super) fn read_response_head(&mut self, now: Instant, data: &[u8]) -> usize {
        let max = self.cfg.limits.max_header_bytes;
        let take = data.len().min(max - self.resp_head.len());
        let before = self.resp_head.len();
        self.resp_head.extend_from_slice(&data[..take]);
        let end = match self.resp_scanner.scan(&self.resp_head) {
            Ok(Some(end)) => end,
            Ok(None) if self.resp_head.len() < max => return take,
            Ok(None) => {
                self.bad_response(now, Refusal::HeadTooLarge);
                return data.len();
            }
            Err(r) => {
                self.bad_response(now, r);
                return data.len();
            }
        };
        let exchange = self
            .exchange
            .as_ref()
            .expect("a response head is read only during an exchange");
        let skip = self.resp_scanner.skip().min(end);
        let parsed = parse_response(&self.resp_head[skip..end], exchange.is_head);
        self.resp_head.clear();
        self.resp_scanner = HeadScanner::default();
        let used = end - before;
        let resp = match parsed {
            Ok(r) => r,
            Err(r) => {
                self.bad_response(now, r);
                return used;
            }
        };
        self.start_response(now, resp);
        used
    }

    pub(super) fn start_response(&mut self, now: Instant, mut resp: ResponseHead) {
        let cfg = Arc::clone(&self.cfg);
        let exchange = self.exchange.as_mut().expect("exchange in flight");
        if resp.is_interim() {
            // 100 is xlb's to send (it answered Expect itself); 102/103 go to HTTP/1.1 clients.
            if resp.status != 100 && exchange.version == Version::Http11 {
                let to = ClientFraming {
                    version: Version::Http11,
                    framing: BodyFraming::None,
                    keep_alive: true,
                };
                write_client_response(&resp, to, &[], &mut self.to_client);
            }
            return;
        }
        if resp.status == 101 {
            if !exchange.websocket {
                self.bad_response(now, Refusal::BadStartLine);
                return;
            }
            let to = ClientFraming {
                version: Version::Http11,
                framing: BodyFraming::None,
                keep_alive: true,
            };
            write_client_response(&resp, to, &[], &mut self.to_client);
            let upstream = self.upstream.as_ref().map(|u| u.id).expect("connected upstream");
            self.events.push_back(Event::Tunnelled);
            self.push(Action::Tunnel { upstream });
            self.closed = true;
            self.tunnelled = true;
            self.client_deadline = None;
            self.upstream_deadline = None;
            return;
        }
        // A final response: the upgrade (if asked) was declined, so the connection stays HTTP.
        exchange.websocket = false;
        let client_framing = match (resp.framing, exchange.version) {
            (BodyFraming::Chunked | BodyFraming::UntilClose, Version::Http11) => BodyFraming::Chunked,
            (BodyFraming::Chunked, Version::Http10) => BodyFraming::UntilClose,
            (f, _) => f,
        };
        let keep_alive_client = exchange.keep_alive && client_framing != BodyFraming::UntilClose;
        let server = self.upstream.as_ref().and_then(|u| u.server);
        let mut set_cookie = None;
        if let (Some(sticky), Some(server)) = (&cfg.sticky, server) {
            match sticky.mode {
                StickyMode::Insert if exchange.sticky_server != Some(server) => {
                    set_cookie = Some(cfg.codec.insert_cookie(&sticky.cookie, server, sticky.timeout_s));
                }
                StickyMode::Insert => {}
                StickyMode::Rewrite => {
                    cfg.codec.rewrite_set_cookie(&mut resp.headers, &sticky.cookie, server);
                }
            }
        }
        let extra: Vec<(&str, &[u8])> = set_cookie.iter().map(|c| ("Set-Cookie", c.as_slice())).collect();
        let to = ClientFraming {
            version: exchange.version,
            framing: client_framing,
            keep_alive: keep_alive_client,
        };
        write_client_response(&resp, to, &extra, &mut self.to_client);
        exchange.response_started = true;
        self.answered(resp.status, false);
        let encoder = if client_framing == BodyFraming::Chunked {
            BodyEncoder::Chunked
        } else {
            BodyEncoder::Identity
        };
        let decoder = BodyDecoder::new(resp.framing, u64::MAX, cfg.limits.max_header_bytes);
        let done = decoder.is_done();
        self.response = ResponsePhase::Body {
            decoder,
            encoder,
            keep_alive_client,
            upstream_reusable: resp.keep_alive,
        };
        if done {
            encoder.end(b"", &mut self.to_client);
            self.finish_response(now);
        }
    }

    pub(super) fn read_response_body(&mut self, now: Instant, data: &[u8]) -> usize {
        let ResponsePhase::Body { decoder, encoder, .. } = &mut self.response else {
            return 0;
        };
        let mut used = 0;
        loop {
            match decoder.decode(&data[used..]) {
                Ok((n, Some(BodyEvent::Data(d)))) => {
                    encoder.data(d, &mut self.to_client);
                    used += n;
                    if used == data.len() && !decoder.is_done() {
                        return used;
                    }
                }
                Ok((n, Some(BodyEvent::End))) => {
                    encoder.end(decoder.trailers(), &mut self.to_client);
                    self.finish_response(now);
                    return used + n;
                }
                Ok((n, None)) => return used + n,
                Err(r) => {
                    self.events.push_back(Event::UpstreamRefused(r));
                    self.events.push_back(Event::Aborted);
                    self.close_all();
                    return data.len();
                }
            }
        }
    }

    /// The upstream sent something unacceptable: 502 if the client has seen nothing yet.
    pub(super) fn bad_response(&mut self, now: Instant, r: Refusal) {
        self.events.push_back(Event::UpstreamRefused(r));
        self.drop_upstream();
        self.fail_exchange(now, 502);
    }

    pub(super) fn finish_response(&mut self, now: Instant) {
        let ResponsePhase::Body {
            keep_alive_client,
            upstream_reusable,
            ..
        } = std::mem::replace(&mut self.response, ResponsePhase::Idle)
        else {
            return;
        };
        let request_done = self.exchange.as_ref().is_some_and(|e| e.request_done);
        self.upstream_deadline = None;
        if !(upstream_reusable && request_done) {
            self.drop_upstream();
        }
        self.exchange = None;
        // After the client's FIN, only complete requests it already sent are still served.
        if !keep_alive_client || !request_done || (self.client_eof && self.head_end.is_none()) {
            self.close_all();
            return;
        }
        self.request = RequestPhase::Head;
        self.client_deadline = Some((now + secs(self.cfg.limits.client_idle_timeout_s), Timer::ClientIdle));
        // The next (pipelined) request starts in `advance`, called by the public handler once it has dealt with
        // whatever else the upstream sent.
    }
}
