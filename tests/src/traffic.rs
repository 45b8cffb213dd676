//! Client-side traffic for integration tests: kernel sockets opened from a thread inside a lab namespace, talking
//! to `xlb-bench sink` backends (which answer `server=NAME\n`, then echo).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::lab::Netns;

/// Connect and read timeout of the helpers.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `f` on a thread inside `ns`, so the kernel sockets it opens live in that namespace.
pub fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let (ns, name) = (ns.clone(), ns.name().to_string());
    std::thread::spawn(move || {
        ns.enter_current_thread()?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in namespace {name} panicked"))?
}

/// One short TCP connection: sends a line, returns the server name from `server=NAME` and checks the echo.
pub fn hello(target: SocketAddr) -> Result<String> {
    hello_on(TcpStream::connect_timeout(&target, TIMEOUT).with_context(|| format!("connect to {target}"))?)
}

/// [`hello`] over an already connected stream.
pub fn hello_on(stream: TcpStream) -> Result<String> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut s = BufReader::new(stream);
    s.get_mut().write_all(b"hello\n")?;
    let mut line = String::new();
    s.read_line(&mut line)?;
    let name = line
        .trim()
        .strip_prefix("server=")
        .with_context(|| format!("unexpected answer {line:?}"))?
        .to_string();
    let mut echo = String::new();
    s.read_line(&mut echo)?;
    ensure!(echo == "hello\n", "echo was {echo:?}");
    Ok(name)
}

/// `n` [`hello`]s from inside `client`, in order.
pub fn hellos(client: &Netns, target: SocketAddr, n: usize) -> Result<Vec<String>> {
    in_ns(client, move || (0..n).map(|_| hello(target)).collect())
}

/// How many times each name occurs.
pub fn count(names: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n.clone()).or_insert(0) += 1;
    }
    m
}

/// How an echo stream is paced.
#[derive(Debug, Clone, Copy)]
pub struct StreamPace {
    /// How long to keep sending.
    pub duration: Duration,
    /// Bytes per write.
    pub chunk: usize,
    /// Pause between writes.
    pub pause: Duration,
}

/// What an echo stream saw.
#[derive(Debug, Clone)]
pub struct StreamReport {
    /// The server that answered.
    pub server: String,
    /// Bytes sent (and echoed back identically).
    pub bytes: u64,
    /// The longest time between two reads of echoed data.
    pub longest_pause: Duration,
}

/// One connection streaming deterministic data for `pace.duration`; every echoed byte is checked. Errors after
/// the server is known name it (`stream via server s2: ...`).
pub fn echo_stream(target: SocketAddr, pace: StreamPace) -> Result<StreamReport> {
    let mut s = TcpStream::connect_timeout(&target, TIMEOUT).with_context(|| format!("connect to {target}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let reader = s.try_clone()?;
    let deadline = Instant::now() + pace.duration;
    let writer = std::thread::spawn(move || -> Result<u64> {
        let mut data = Pattern::default();
        let mut buf = vec![0u8; pace.chunk];
        let mut sent = 0;
        while Instant::now() < deadline {
            buf.iter_mut().for_each(|b| *b = data.next_byte());
            s.write_all(&buf)?;
            sent += buf.len() as u64;
            std::thread::sleep(pace.pause);
        }
        s.shutdown(std::net::Shutdown::Write)?;
        Ok(sent)
    });
    let mut reader = BufReader::new(reader);
    let mut head = String::new();
    reader.read_line(&mut head).context("reading the server's name")?;
    let server = head.trim().trim_start_matches("server=").to_string();
    let (bytes, longest_pause) = check_echo(reader, writer).with_context(|| format!("stream via server {server}"))?;
    Ok(StreamReport {
        server,
        bytes,
        longest_pause,
    })
}

/// Reads the echo of what `writer` sends and checks it byte for byte; returns the byte count and longest pause.
fn check_echo(mut reader: BufReader<TcpStream>, writer: JoinHandle<Result<u64>>) -> Result<(u64, Duration)> {
    let mut expected = Pattern::default();
    let mut received = 0u64;
    let mut buf = vec![0u8; 65536];
    let (mut last, mut longest) = (Instant::now(), Duration::ZERO);
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        longest = longest.max(last.elapsed());
        last = Instant::now();
        for b in &buf[..n] {
            ensure!(*b == expected.next_byte(), "byte {received} differs");
            received += 1;
        }
    }
    let sent = writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    ensure!(received == sent, "sent {sent} bytes, got {received} back");
    Ok((sent, longest))
}

/// The deterministic byte stream of [`echo_stream`] (a linear congruential generator).
#[derive(Debug, Clone, Copy)]
struct Pattern(u32);

impl Default for Pattern {
    fn default() -> Self {
        Pattern(1)
    }
}

impl Pattern {
    fn next_byte(&mut self) -> u8 {
        self.0 = self.0.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        (self.0 >> 16) as u8
    }
}
