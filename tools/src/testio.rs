//! Test helper: a connection without a network, for the HTTP servers' request handling.

use std::io::{Cursor, Read, Write};

/// A request's bytes in, the response's bytes out.
pub struct Exchange {
    request: Cursor<Vec<u8>>,
    /// What was written back.
    pub response: Vec<u8>,
}

impl Exchange {
    /// A connection that will read `request`.
    pub fn new(request: &str) -> Exchange {
        Exchange {
            request: Cursor::new(request.as_bytes().to_vec()),
            response: Vec::new(),
        }
    }
}

impl Read for Exchange {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.request.read(buf)
    }
}

impl Write for Exchange {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.response.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
