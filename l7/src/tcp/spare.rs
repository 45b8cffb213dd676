//! Emptied socket buffers kept for reuse, by size.
//!
//! A kept upstream connection goes idle and busy again for every request it serves (HTTP/2 streams take one
//! each): it swaps its idle-size buffers for the large ones and back each time ([`super::TcpHost::set_busy`]),
//! and a new connection starts with idle-size buffers. Allocating and zeroing those buffers every time was the
//! largest single cost of proxying HTTP/2 (a profile put `memset` and `malloc`/`free` of these buffers at ~10 %
//! of the worker). The pool holds at most a fixed number per size, so its memory is bounded: at the defaults
//! (32 KiB large, 1 KiB idle-size) 256 × 32 KiB + 1 024 × 1 KiB ≈ 9 MiB per worker, not counted in the
//! `buffer_bytes` gauge (which counts what connections hold).

use smoltcp::socket::tcp::SocketBuffer;

/// Most spare buffers kept of a large size (`rx_buffer`, `tx_buffer`).
pub const MAX_LARGE: usize = 256;
/// Most spare buffers kept of the idle size.
pub const MAX_IDLE: usize = 1024;

/// Spare buffers by capacity (a host uses at most three sizes, so a short list beats a map).
#[derive(Default)]
pub struct SpareBuffers {
    idle_size: usize,
    by_size: Vec<(usize, Vec<SocketBuffer<'static>>)>,
}

impl SpareBuffers {
    /// A pool for a host whose idle-size buffers have `idle_size` bytes.
    pub fn new(idle_size: usize) -> Self {
        SpareBuffers {
            idle_size,
            by_size: Vec::new(),
        }
    }

    /// An empty buffer of `size` bytes: a spare one if there is one, else a new one.
    pub fn take(&mut self, size: usize) -> SocketBuffer<'static> {
        self.by_size
            .iter_mut()
            .find(|(n, _)| *n == size)
            .and_then(|(_, list)| list.pop())
            .unwrap_or_else(|| SocketBuffer::new(vec![0u8; size]))
    }

    /// Keeps an emptied buffer for reuse, unless its size already has as many spares as allowed.
    pub fn give(&mut self, mut buffer: SocketBuffer<'static>) {
        let size = buffer.capacity();
        let max = if size == self.idle_size { MAX_IDLE } else { MAX_LARGE };
        let list = match self.by_size.iter().position(|(n, _)| *n == size) {
            Some(i) => &mut self.by_size[i].1,
            None => {
                self.by_size.push((size, Vec::new()));
                &mut self.by_size.last_mut().expect("just pushed").1
            }
        };
        if list.len() < max {
            buffer.clear(); // empty already: its stale bytes are never read
            list.push(buffer);
        }
    }

    /// Spare buffers held of `size` bytes.
    #[cfg(test)]
    pub fn count(&self, size: usize) -> usize {
        self.by_size
            .iter()
            .find(|(n, _)| *n == size)
            .map_or(0, |(_, list)| list.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_by_size_and_the_pool_is_bounded() {
        let mut pool = SpareBuffers::new(1024);
        let a = pool.take(32 * 1024);
        assert_eq!(a.capacity(), 32 * 1024);
        let write_one = |b: &mut SocketBuffer<'static>| b.enqueue_slice(&[0]);
        pool.give(a);
        pool.give(pool_buffer(1024));
        assert_eq!((pool.count(32 * 1024), pool.count(1024)), (1, 1));
        // The idle-size request gets the idle-size spare, not the large one.
        let mut small = pool.take(1024);
        assert_eq!(small.capacity(), 1024);
        assert_eq!(write_one(&mut small), 1);
        assert_eq!((pool.count(32 * 1024), pool.count(1024)), (1, 0));
        // A given-back buffer comes back empty whatever it held.
        pool.give(small);
        let again = pool.take(1024);
        assert!(again.is_empty());
        // Large spares stop at MAX_LARGE, idle-size ones at MAX_IDLE.
        for _ in 0..MAX_LARGE + 10 {
            pool.give(pool_buffer(32 * 1024));
        }
        for _ in 0..MAX_IDLE + 10 {
            pool.give(pool_buffer(1024));
        }
        assert_eq!((pool.count(32 * 1024), pool.count(1024)), (MAX_LARGE, MAX_IDLE));
    }

    fn pool_buffer(size: usize) -> SocketBuffer<'static> {
        SocketBuffer::new(vec![0u8; size])
    }
}
