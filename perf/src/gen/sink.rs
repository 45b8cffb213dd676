//! The backend server of `xlb-bench sink`, whose answers name it.
//!
//! - **TCP**: when a connection first sends data, the sink answers
//!   `server=NAME\n` followed by an echo of that data, then echoes every
//!   further byte; a connection that sends nothing is simply closed when the
//!   client closes it. So one request of `B` bytes gets `len("server=NAME\n") + B`
//!   bytes back, and long streams work as with an echo server.
//! - **UDP**: see [`udp::sink_reply`]: request/response
//!   datagrams of `xlb-bench udp --mode rr` come back with the same size and
//!   the server name in a fixed field, blast datagrams get no reply, a
//!   datagram starting with `WHO?` gets `server=NAME\n`, anything else is
//!   echoed unchanged.
//! - **HTTP/1.1**: every request gets `200 OK` with header `X-Server: NAME` and
//!   body `server=NAME\n`; connections are kept alive unless the client asks
//!   for `Connection: close` (or speaks HTTP/1.0 without keep-alive).
//!
//! TCP and HTTP are served by `threads` event loops (edge-triggered epoll
//! through `mio`), all accepting from the one listening socket, so a burst of
//! short connections costs no thread start-ups. UDP is served by one thread.
//!
//! [`Sink::run`] serves until its stop flag is set, then returns a
//! [`SinkSummary`] of what it counted. Connections established before the
//! stop are all accepted and counted, also those still waiting in the
//! listen queue.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use mio::net::{TcpListener as MioListener, TcpStream as MioStream};
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;

use super::{udp, STOP_CHECK};

/// Listen queue length requested for TCP and HTTP sinks (the kernel caps it
/// at `net.core.somaxconn`), so bursts of connections are not dropped.
const LISTEN_BACKLOG: libc::c_int = 4096;

/// Largest request head the HTTP sink accepts.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Largest request body the HTTP sink accepts (it is read and dropped).
const MAX_REQUEST_BODY: usize = 16 << 20;

/// Bytes read from a connection at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Receive buffer asked for UDP sinks, so bursts are not dropped.
const UDP_RCVBUF: libc::c_int = 4 << 20;

/// Token of the listening socket in every event loop.
const LISTENER: Token = Token(0);

/// Protocol a sink serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SinkProto {
    /// Server-name line, then echo.
    Tcp,
    /// Datagram echo with server name; see the module docs.
    Udp,
    /// HTTP/1.1 `200 OK` naming the server.
    Http,
}

impl SinkProto {
    /// Lower-case name, as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkProto::Tcp => "tcp",
            SinkProto::Udp => "udp",
            SinkProto::Http => "http",
        }
    }
}

/// What a sink serves and where.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Protocol to serve.
    pub proto: SinkProto,
    /// Name put into answers; see [`check_server_name`](super::check_server_name).
    pub name: String,
    /// TCP and HTTP: event-loop threads (at least 1).
    pub threads: usize,
}

/// What a sink counted, printed as one JSON line when it stops.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SinkSummary {
    /// Always `"sink"`.
    pub scenario: &'static str,
    /// `tcp`, `udp` or `http`.
    pub proto: &'static str,
    /// The server name.
    pub name: String,
    /// The address listened on.
    pub listen: String,
    /// TCP and HTTP: connections accepted.
    pub connections: u64,
    /// TCP: connections that sent data (and got the server line); HTTP:
    /// requests answered; UDP: datagrams answered with the server name.
    pub requests: u64,
    /// UDP: datagrams received.
    pub datagrams: u64,
    /// UDP: datagrams sent back.
    pub replies: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Payload bytes sent.
    pub bytes_out: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    datagrams: AtomicU64,
    replies: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

#[derive(Debug)]
enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// A bound sink, ready to [`run`](Sink::run).
#[derive(Debug)]
pub struct Sink {
    config: SinkConfig,
    socket: Socket,
    counters: Counters,
}

impl Sink {
    /// Binds the listening socket.
    pub fn bind(config: SinkConfig) -> io::Result<Sink> {
        let socket = match config.proto {
            SinkProto::Tcp | SinkProto::Http => {
                let listener = TcpListener::bind(config.listen)?;
                // Listening again on a listening socket only changes its backlog.
                // SAFETY: the descriptor is a valid, bound socket.
                if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                listener.set_nonblocking(true)?;
                Socket::Tcp(listener)
            }
            SinkProto::Udp => {
                let socket = UdpSocket::bind(config.listen)?;
                set_rcvbuf(&socket, UDP_RCVBUF);
                socket.set_read_timeout(Some(STOP_CHECK))?;
                Socket::Udp(socket)
            }
        };
        Ok(Sink {
            config,
            socket,
            counters: Counters::default(),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.socket {
            Socket::Tcp(listener) => listener.local_addr(),
            Socket::Udp(socket) => socket.local_addr(),
        }
    }

    /// Serves until `stop` is set, then returns the counts.
    pub fn run(self, stop: &AtomicBool) -> io::Result<SinkSummary> {
        let listen = self.local_addr()?.to_string();
        match &self.socket {
            Socket::Tcp(listener) => self.serve_streams(listener, stop)?,
            Socket::Udp(socket) => self.serve_udp(socket, stop)?,
        }
        let c = &self.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Ok(SinkSummary {
            scenario: "sink",
            proto: self.config.proto.as_str(),
            name: self.config.name.clone(),
            listen,
            connections: get(&c.connections),
            requests: get(&c.requests),
            datagrams: get(&c.datagrams),
            replies: get(&c.replies),
            bytes_in: get(&c.bytes_in),
            bytes_out: get(&c.bytes_out),
        })
    }

    fn serve_streams(&self, listener: &TcpListener, stop: &AtomicBool) -> io::Result<()> {
        let answers = Answers::new(&self.config.name);
        thread::scope(|scope| {
            let loops = (0..self.config.threads.max(1))
                .map(|_| {
                    let event_loop = EventLoop::new(listener.try_clone()?, self, &answers)?;
                    Ok(scope.spawn(move || event_loop.run(stop)))
                })
                .collect::<io::Result<Vec<_>>>()?;
            for handle in loops {
                handle
                    .join()
                    .map_err(|_| io::Error::other("a sink event loop panicked"))??;
            }
            Ok(())
        })
    }

    fn serve_udp(&self, socket: &UdpSocket, stop: &AtomicBool) -> io::Result<()> {
        let c = &self.counters;
        let name = self.config.name.as_bytes();
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            let (len, peer) = match socket.recv_from(&mut buf) {
                Ok(got) => got,
                // Timeouts let the loop see the stop flag; other errors (e.g.
                // ICMP errors for earlier replies) concern one datagram.
                Err(_) => continue,
            };
            c.datagrams.fetch_add(1, Ordering::Relaxed);
            add(&c.bytes_in, len);
            let Some(reply) = udp::sink_reply(&mut buf, len, name) else {
                continue;
            };
            if reply.names_server {
                c.requests.fetch_add(1, Ordering::Relaxed);
            }
            if socket.send_to(&buf[..reply.len], peer).is_ok() {
                c.replies.fetch_add(1, Ordering::Relaxed);
                add(&c.bytes_out, reply.len);
            }
        }
        Ok(())
    }
}

/// Best effort: a smaller buffer only risks drops, which the kernel counts.
fn set_rcvbuf(socket: &UdpSocket, bytes: libc::c_int) {
    // SAFETY: the option value is a valid c_int of the size passed.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::from_ref(&bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Everything the sink ever writes, prepared once.
#[derive(Debug)]
struct Answers {
    /// TCP: the line before the first echoed bytes.
    server_line: Vec<u8>,
    /// HTTP: indexed by `[close as usize][head_method as usize]`.
    http: [[Vec<u8>; 2]; 2],
}

impl Answers {
    fn new(name: &str) -> Answers {
        let answer = |close, head| http_answer(name, close, head);
        Answers {
            server_line: format!("server={name}\n").into_bytes(),
            http: [
                [answer(false, false), answer(false, true)],
                [answer(true, false), answer(true, true)],
            ],
        }
    }
}

/// One event-loop thread: accepts from the shared listener and serves its
/// own connections.
struct EventLoop<'a> {
    poll: Poll,
    listener: MioListener,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    proto: SinkProto,
    counters: &'a Counters,
    answers: &'a Answers,
}

impl<'a> EventLoop<'a> {
    /// `listener` is this loop's own descriptor of the listening socket.
    fn new(listener: TcpListener, sink: &'a Sink, answers: &'a Answers) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut listener = MioListener::from_std(listener);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(EventLoop {
            poll,
            listener,
            conns: HashMap::new(),
            next_token: LISTENER.0 + 1,
            proto: sink.config.proto,
            counters: &sink.counters,
            answers,
        })
    }

    fn run(mut self, stop: &AtomicBool) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            if stop.load(Ordering::Relaxed) {
                // Count what is still queued: every handshake completed
                // before the stop is an accepted connection.
                return self.accept_all(false);
            }
            match self.poll.poll(&mut events, Some(STOP_CHECK)) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                result => result?,
            }
            for event in events.iter() {
                if event.token() == LISTENER {
                    self.accept_all(true)?;
                } else {
                    self.drive(event.token());
                }
            }
        }
    }

    /// Accepts until the queue is empty (as far as this loop can tell).
    fn accept_all(&mut self, serve: bool) -> io::Result<()> {
        loop {
            let mut stream = match self.listener.accept() {
                Ok((stream, _peer)) => stream,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(err) => {
                    // E.g. out of descriptors: the queue is retried on the
                    // next connection.
                    eprintln!("xlb-bench sink: accept failed: {err}");
                    return Ok(());
                }
            };
            self.counters.connections.fetch_add(1, Ordering::Relaxed);
            if !serve {
                continue;
            }
            let token = Token(self.next_token);
            self.next_token += 1;
            // Both directions, edge-triggered: `drive` works until it blocks.
            let interest = Interest::READABLE | Interest::WRITABLE;
            if self.poll.registry().register(&mut stream, token, interest).is_ok() {
                let _ = stream.set_nodelay(true);
                self.conns.insert(token, Conn::new(stream));
            }
        }
    }

    /// Lets connection `token` make progress; closes it when it is done.
    fn drive(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return; // closed earlier in this batch of events
        };
        let done = match conn.drive(self.proto, self.counters, self.answers) {
            Ok(Progress::Blocked) => false,
            Ok(Progress::Finished) | Err(_) => true,
        };
        if done {
            if let Some(mut conn) = self.conns.remove(&token) {
                let _ = self.poll.registry().deregister(&mut conn.stream);
            }
        }
    }
}

/// Where a connection stands after [`Conn::drive`].
enum Progress {
    /// Waiting for the socket to become readable or writable.
    Blocked,
    /// To be closed.
    Finished,
}

/// One accepted connection.
struct Conn {
    stream: MioStream,
    /// HTTP: received bytes not yet parsed into a request.
    input: Vec<u8>,
    /// Bytes to send; `output[written..]` is still pending.
    output: Vec<u8>,
    written: usize,
    /// TCP: whether the server line was sent.
    greeted: bool,
    /// The peer closed its side.
    peer_closed: bool,
    /// Close once `output` is sent.
    closing: bool,
}

impl Conn {
    fn new(stream: MioStream) -> Conn {
        Conn {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            greeted: false,
            peer_closed: false,
            closing: false,
        }
    }

    /// Alternates sending pending output and reading (which makes new
    /// output) until the socket blocks or the connection is done. Nothing is
    /// read while output is pending, which pushes back on fast senders.
    fn drive(&mut self, proto: SinkProto, c: &Counters, answers: &Answers) -> io::Result<Progress> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            while self.written < self.output.len() {
                match self.stream.write(&self.output[self.written..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.written += n;
                        add(&c.bytes_out, n);
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(Progress::Blocked),
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => return Err(err),
                }
            }
            self.output.clear();
            self.written = 0;
            if self.closing || self.peer_closed {
                return Ok(Progress::Finished);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => self.peer_closed = true,
                Ok(n) => {
                    add(&c.bytes_in, n);
                    match proto {
                        SinkProto::Http => self.take_http(&chunk[..n], c, answers),
                        _ => self.take_echo(&chunk[..n], c, answers),
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(Progress::Blocked),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }

    /// TCP: the server line before the first bytes, then plain echo.
    fn take_echo(&mut self, data: &[u8], c: &Counters, answers: &Answers) {
        if !self.greeted {
            self.greeted = true;
            c.requests.fetch_add(1, Ordering::Relaxed);
            self.output.extend_from_slice(&answers.server_line);
        }
        self.output.extend_from_slice(data);
    }

    /// HTTP: answers every complete request in the input (pipelining too).
    fn take_http(&mut self, data: &[u8], c: &Counters, answers: &Answers) {
        self.input.extend_from_slice(data);
        while !self.closing {
            let head = match parse_request(&self.input) {
                Ok(Some(head)) if head.body_len > MAX_REQUEST_BODY => {
                    return self.bad_request("request body too large")
                }
                Ok(Some(head)) => head,
                Ok(None) if self.input.len() > MAX_REQUEST_HEAD => return self.bad_request("request head too large"),
                Ok(None) => return,
                Err(why) => return self.bad_request(why),
            };
            let request_len = head.len + head.body_len;
            if self.input.len() < request_len {
                return; // the body is still coming
            }
            self.input.drain(..request_len);
            // Counted before the answer is sent: a client that got the
            // answer was counted.
            c.requests.fetch_add(1, Ordering::Relaxed);
            let answer = &answers.http[usize::from(head.close)][usize::from(head.head_method)];
            self.output.extend_from_slice(answer);
            self.closing = head.close;
        }
    }

    fn bad_request(&mut self, why: &str) {
        let body = format!("{why}\n");
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        self.output.extend_from_slice(answer.as_bytes());
        self.closing = true;
    }
}

/// What the HTTP sink needs from one request head.
#[derive(Debug, PartialEq, Eq)]
struct RequestHead {
    /// Bytes of the head, up to and including the empty line.
    len: usize,
    /// Bytes of body following the head.
    body_len: usize,
    /// Whether to close the connection after answering.
    close: bool,
    /// Whether the method is HEAD (no body in the answer).
    head_method: bool,
}

/// Parses a request head; `Ok(None)` if more bytes are needed, `Err` for a
/// request the sink cannot serve.
fn parse_request(buf: &[u8]) -> Result<Option<RequestHead>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed request"),
    };
    let http10 = req.version == Some(0);
    let mut close = http10;
    let mut body_len = 0;
    for header in req.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or("").trim();
        if header.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && http10 {
                    close = false;
                }
            }
        } else if header.name.eq_ignore_ascii_case("content-length") {
            body_len = value.parse().map_err(|_| "bad Content-Length")?;
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("request bodies with Transfer-Encoding are not supported");
        }
    }
    Ok(Some(RequestHead {
        len,
        body_len,
        close,
        head_method: req.method == Some("HEAD"),
    }))
}

/// The complete answer to one request.
fn http_answer(name: &str, close: bool, head_method: bool) -> Vec<u8> {
    let body = format!("server={name}\n");
    let connection = if close { "Connection: close\r\n" } else { "" };
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Server: {name}\r\n{connection}\r\n",
        body.len()
    );
    if !head_method {
        answer.push_str(&body);
    }
    answer.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads() {
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            parse_request(get),
            Ok(Some(RequestHead {
                len: get.len(),
                body_len: 0,
                close: false,
                head_method: false
            }))
        );
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost"), Ok(None));
        let close = parse_request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(close.unwrap().unwrap().close);
        let old = parse_request(b"GET / HTTP/1.0\r\n\r\n");
        assert!(old.unwrap().unwrap().close);
        let old_ka = parse_request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(!old_ka.unwrap().unwrap().close);
        let post = parse_request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(post.unwrap().unwrap().body_len, 5);
        assert!(parse_request(b"\x01\x02 nonsense\r\n\r\n").is_err());
    }

    #[test]
    fn answers_name_the_server() {
        let answer = String::from_utf8(http_answer("s1", false, false)).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(answer.contains("\r\nX-Server: s1\r\n"));
        assert!(answer.contains("\r\nContent-Length: 10\r\n"));
        assert!(answer.ends_with("\r\n\r\nserver=s1\n"));
        let head = String::from_utf8(http_answer("s1", true, true)).unwrap();
        assert!(head.ends_with("Connection: close\r\n\r\n"));
    }
}
