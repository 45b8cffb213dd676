//! Byte streams (Unix, TCP, optionally TLS over either) split into a read half and a
//! write half so one thread can read frames while another writes responses.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A connected socket that can be cloned and shut down from another thread.
pub trait Socket: Read + Write + Send + Sync + 'static {
    /// Another handle on the same socket.
    fn try_clone_socket(&self) -> io::Result<Box<dyn Socket>>;
    /// Shuts both directions down, waking any thread blocked on it.
    fn shutdown_both(&self);
    /// Sets `SO_RCVTIMEO` / `SO_SNDTIMEO`.
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()>;
}

macro_rules! impl_socket {
    ($t:ty) => {
        impl Socket for $t {
            fn try_clone_socket(&self) -> io::Result<Box<dyn Socket>> {
                Ok(Box::new(self.try_clone()?))
            }
            fn shutdown_both(&self) {
                let _ = self.shutdown(Shutdown::Both);
            }
            fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()> {
                self.set_read_timeout(read)?;
                self.set_write_timeout(write)
            }
        }
    };
}
impl_socket!(UnixStream);
impl_socket!(TcpStream);

/// The read half of a connection.
pub type ReadHalf = Box<dyn Read + Send>;
/// The write half of a connection.
pub type WriteHalf = Box<dyn Write + Send>;

/// True for the error kinds a socket read timeout produces.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Splits a socket, with an optional TLS session whose handshake is already complete.
/// Also returns a handle to shut the socket down from elsewhere.
pub fn split(
    sock: Box<dyn Socket>,
    tls: Option<rustls::Connection>,
) -> io::Result<(ReadHalf, WriteHalf, Box<dyn Socket>)> {
    let control = sock.try_clone_socket()?;
    let reader = sock.try_clone_socket()?;
    match tls {
        None => Ok((Box::new(reader), Box::new(sock), control)),
        Some(conn) => {
            let shared = Arc::new(TlsShared {
                conn: Mutex::new(conn),
                wsock: Mutex::new(sock),
            });
            let r = TlsReader {
                shared: shared.clone(),
                sock: reader,
                pending: Vec::new(),
                used: 0,
            };
            Ok((Box::new(r), Box::new(TlsWriter { shared }), control))
        }
    }
}

struct TlsShared {
    conn: Mutex<rustls::Connection>,
    /// Serializes socket writes; taken while `conn` is held, held alone while writing.
    wsock: Mutex<Box<dyn Socket>>,
}

fn poisoned() -> io::Error {
    io::Error::other("tls state poisoned by a panic")
}

impl TlsShared {
    /// Sends whatever TLS output is pending. With `wait == false`, gives up if another
    /// thread is writing (it will send the output after its own).
    fn send_pending(&self, wait: bool) -> io::Result<()> {
        loop {
            let mut conn = self.conn.lock().map_err(|_| poisoned())?;
            if !conn.wants_write() {
                return Ok(());
            }
            let mut wsock = if wait {
                self.wsock.lock().map_err(|_| poisoned())?
            } else {
                match self.wsock.try_lock() {
                    Ok(g) => g,
                    Err(_) => return Ok(()),
                }
            };
            let mut out = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut out)?;
            }
            drop(conn);
            wsock.write_all(&out)?;
        }
    }
}

struct TlsReader {
    shared: Arc<TlsShared>,
    sock: Box<dyn Socket>,
    /// Ciphertext read from the socket and not yet given to rustls.
    pending: Vec<u8>,
    used: usize,
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut conn = self.shared.conn.lock().map_err(|_| poisoned())?;
                match conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if self.used < self.pending.len() {
                    let mut slice = &self.pending[self.used..];
                    let n = conn.read_tls(&mut slice)?;
                    self.used += n;
                    if let Err(e) = conn.process_new_packets() {
                        drop(conn);
                        let _ = self.shared.send_pending(false); // the alert
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    drop(conn);
                    self.shared.send_pending(false)?;
                    continue;
                }
            }
            self.pending.resize(16 * 1024, 0);
            self.used = 0;
            let n = match self.sock.read(&mut self.pending) {
                Ok(n) => n,
                Err(e) => {
                    self.pending.clear();
                    return Err(e);
                }
            };
            self.pending.truncate(n);
            if n == 0 {
                return Ok(0);
            }
        }
    }
}

struct TlsWriter {
    shared: Arc<TlsShared>,
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.shared.conn.lock().map_err(|_| poisoned())?.writer().write(buf)?;
        self.shared.send_pending(true)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.shared.send_pending(true)
    }
}

/// Runs a TLS handshake to completion on `sock` (bounded by the socket's timeouts).
pub fn handshake(conn: &mut rustls::Connection, sock: &mut dyn Socket) -> io::Result<()> {
    while conn.is_handshaking() {
        conn.complete_io(&mut &mut *sock)?;
    }
    while conn.wants_write() {
        conn.write_tls(&mut &mut *sock)?;
    }
    Ok(())
}
