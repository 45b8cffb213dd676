//! A blocking client of the control API: one request per connection, over the node's Unix socket or, with a
//! token, over its TCP API. Used by `xlbctl` and by tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::routes::ErrorReply;

/// How long the client waits for an answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the API is.
#[derive(Debug, Clone)]
pub enum Endpoint<'a> {
    /// The node's control socket.
    Unix(&'a Path),
    /// The TCP API (`node.api_address`) with its token.
    Tcp { addr: SocketAddr, token: &'a str },
}

impl Endpoint<'_> {
    /// Sends `method path` with an optional JSON body; returns (status, JSON body).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
        match self {
            Endpoint::Unix(socket) => request(socket, method, path, body),
            Endpoint::Tcp { addr, token } => request_tcp(*addr, token, method, path, body),
        }
    }

    /// Sends a request and reads a 200 answer as `T`; any other status is an error carrying the API's message.
    pub fn call<T: DeserializeOwned>(&self, method: &str, path: &str, body: Option<&Value>) -> Result<T, String> {
        let (status, reply) = self.request(method, path, body)?;
        if status != 200 {
            return Err(serde_json::from_value::<ErrorReply>(reply)
                .map(|e| e.error)
                .unwrap_or_else(|_| format!("request failed with status {status}")));
        }
        serde_json::from_value(reply).map_err(|e| format!("unexpected answer to {method} {path}: {e}"))
    }
}

/// Sends `method path` (with an optional JSON body) to the control socket and returns (status, JSON body).
pub fn request(socket: &Path, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
    let stream = UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect to {} ({e}): is xlb running?", socket.display()))?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| e.to_string())?;
    exchange(stream, &socket.display().to_string(), None, method, path, body)
}

/// [`request`] over the TCP API at `addr`, with its `token`.
pub fn request_tcp(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("cannot connect to {addr} ({e}): is xlb running with node.api_address?"))?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| e.to_string())?;
    exchange(stream, &addr.to_string(), Some(token), method, path, body)
}

/// Writes one request to `stream` and reads its response.
fn exchange(
    mut stream: impl Read + Write,
    peer: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: xlb\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading the response from {peer}: {e}"))?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let body_at = match resp.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(format!("malformed response from {peer}")),
    };
    let status = resp.code.unwrap_or(0);
    let body = serde_json::from_slice(&raw[body_at..])
        .map_err(|e| format!("response body from {peer} (status {status}) is not JSON: {e}"))?;
    Ok((status, body))
}
