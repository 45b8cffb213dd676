//! Waking a sleeping worker from another thread.
//!
//! An adaptive worker sleeps in poll(2) on its sockets. A pipeline that also takes work from another thread
//! (frames the HA driver wants sent) gives the worker a [`Wake`]: the other thread signals it after queuing, and
//! the worker sleeps on it too. It is an eventfd: level-triggered, so a signal before the worker sleeps is not
//! lost, and a syscall only when someone actually signals.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An eventfd that wakes a worker.
#[derive(Debug)]
pub struct Wake {
    fd: OwnedFd,
}

impl Wake {
    /// A new, unsignalled wake-up.
    pub fn new() -> io::Result<Wake> {
        // SAFETY: plain eventfd(2) call.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nothing else.
        Ok(Wake {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }

    /// Wakes the worker (or makes its next sleep return at once).
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64; a full counter (EAGAIN) still leaves it readable.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Clears pending signals (the worker, after waking).
    pub fn clear(fd: RawFd) {
        let mut n: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; nonblocking, so nothing pending is just EAGAIN.
        unsafe { libc::read(fd, (&mut n as *mut u64).cast(), 8) };
    }

    /// The descriptor to sleep on (readable while signalled).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
    }

    #[test]
    fn signals_stay_until_cleared() {
        let w = Wake::new().unwrap();
        assert!(!readable(w.fd()));
        w.signal();
        w.signal();
        assert!(readable(w.fd()), "a signal before the sleep is not lost");
        Wake::clear(w.fd());
        assert!(!readable(w.fd()), "one clear takes every pending signal");
        Wake::clear(w.fd());
    }
}
