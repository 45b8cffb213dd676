//! AF_XDP ports: a worker's UMEM and the sockets (one per interface queue) that share it.
//!
//! All ports of a worker share one UMEM, so a frame received on one interface can be transmitted on another
//! without a copy (two-arm forwarding). Each port has its own fill, completion, RX and TX rings.

use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};

use xsk_rs::config::{BindFlags, FrameSize, LibxdpFlags, QueueSize, SocketConfig, UmemConfig};
use xsk_rs::{CompQueue, FillQueue, RxQueue, Socket, TxQueue};

use crate::config::ZeroCopy;

/// The UMEM and frame descriptor types of the AF_XDP binding, for code that drives a [`Port`]'s rings itself.
pub use xsk_rs::{FrameDesc, Umem};

/// Size of every UMEM frame (one page: fits a 1500-byte MTU frame plus headroom, and is what zero-copy
/// drivers expect).
pub const FRAME_SIZE: u32 = 4096;

/// One AF_XDP socket bound to an interface queue.
pub struct Port {
    /// Interface name.
    pub ifname: String,
    /// Queue id on the interface.
    pub queue: u32,
    /// Whether the socket works in zero-copy mode, as the kernel reports it (`XDP_OPTIONS`): a socket that
    /// shares a UMEM already bound elsewhere inherits that binding's mode whatever its own bind asked.
    pub zero_copy: bool,
    /// The mode the bind asked for.
    pub requested_zero_copy: bool,
    pub(crate) rx: RxQueue,
    pub(crate) tx: TxQueue,
    pub(crate) fill: FillQueue,
    pub(crate) comp: CompQueue,
}

impl Port {
    /// The socket's file descriptor (for the XDP filter's socket map and for poll(2)).
    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    // A small batch API over the four rings, for programs that drive a port without a worker (load
    // generators, tests). The worker uses the rings directly.

    /// Takes up to `descs.len()` received frames off the RX ring into `descs`; returns how many.
    ///
    /// # Safety
    ///
    /// The port must have been opened on the UMEM whose frames are handed to it. The received frames are the
    /// caller's until given back to a fill or TX ring.
    pub unsafe fn rx_batch(&mut self, descs: &mut [FrameDesc]) -> usize {
        // SAFETY: forwarded to the caller.
        unsafe { self.rx.consume(descs) }
    }

    /// Puts as many of `descs` as fit on the TX ring and, if the kernel asks for it, wakes it to send;
    /// returns how many were queued. Call it with an empty slice to only wake the kernel: in copy mode the
    /// kernel sends a limited number of frames per wake-up, so frames can still wait in the ring.
    ///
    /// # Safety
    ///
    /// The frames must belong to this port's UMEM and be owned by the caller; the queued ones belong to the
    /// kernel until they come back through [`Port::complete_batch`].
    pub unsafe fn tx_batch(&mut self, descs: &[FrameDesc]) -> io::Result<usize> {
        let room = self.tx.nb_free(descs.len() as u32) as usize;
        // SAFETY: forwarded to the caller.
        let queued = unsafe { self.tx.produce(&descs[..room.min(descs.len())]) };
        if self.tx.needs_wakeup() {
            self.tx.wakeup()?;
        }
        Ok(queued)
    }

    /// Gives as many of `descs` as fit to the fill ring, waking the kernel if it asks for it; returns how
    /// many were given.
    ///
    /// # Safety
    ///
    /// The frames must belong to this port's UMEM and be owned by the caller; the given ones belong to the
    /// kernel until they come back through [`Port::rx_batch`].
    pub unsafe fn fill_batch(&mut self, descs: &[FrameDesc]) -> usize {
        let room = self.fill.nb_free(descs.len() as u32) as usize;
        // SAFETY: forwarded to the caller.
        let given = unsafe { self.fill.produce(&descs[..room.min(descs.len())]) };
        if given > 0 && self.fill.needs_wakeup() {
            // A failed wake-up only delays reception until the next one.
            let _ = self.fill.wakeup(self.rx.fd_mut(), 0);
        }
        given
    }

    /// Takes up to `descs.len()` frames the kernel has finished transmitting off the completion ring into
    /// `descs`; returns how many. Their data lengths read 0 again.
    ///
    /// # Safety
    ///
    /// The port must have been opened on the UMEM whose frames were sent through it.
    pub unsafe fn complete_batch(&mut self, descs: &mut [FrameDesc]) -> usize {
        // SAFETY: forwarded to the caller.
        unsafe { self.comp.consume(descs) }
    }
}

/// An error opening a port, naming the interface, queue and cause.
#[derive(Debug, thiserror::Error)]
#[error("AF_XDP socket on {iface} queue {queue}: {what}: {source}{hint}")]
pub struct PortError {
    iface: String,
    queue: u32,
    what: String,
    source: io::Error,
    hint: &'static str,
}

fn io_cause(e: &(dyn std::error::Error + 'static)) -> io::Error {
    match e.source().and_then(|s| s.downcast_ref::<io::Error>()) {
        Some(io) => io
            .raw_os_error()
            .map(io::Error::from_raw_os_error)
            .unwrap_or_else(|| io::Error::other(io.to_string())),
        None => io::Error::other(e.to_string()),
    }
}

fn hint(err: &io::Error, zero_copy: bool) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => " (needs root or CAP_NET_ADMIN + CAP_NET_RAW + CAP_BPF)",
        Some(libc::EINVAL) => " (queue id out of range for this interface? see `ethtool -l`)",
        Some(libc::EOPNOTSUPP) if zero_copy => {
            " (the driver has no zero-copy AF_XDP support; use zero_copy = \"auto\" or \"off\")"
        }
        Some(libc::EBUSY) => " (the queue is already bound by another AF_XDP socket)",
        Some(libc::ENODEV) => " (no such interface)",
        Some(libc::ENOMEM) | Some(libc::ENOBUFS) => {
            " (cannot pin UMEM memory: raise the memlock limit or lower datapath.umem_frames)"
        }
        _ => "",
    }
}

/// `SOL_XDP` (uapi `linux/socket.h`).
const SOL_XDP: libc::c_int = 283;
/// `XDP_OPTIONS` and its flag (uapi `linux/if_xdp.h`).
const XDP_OPTIONS: libc::c_int = 8;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;

/// Whether `XDP_OPTIONS` flags say zero-copy.
pub fn options_zero_copy(flags: u32) -> bool {
    flags & XDP_OPTIONS_ZEROCOPY != 0
}

/// Asks the kernel whether the AF_XDP socket `fd` works in zero-copy mode (`getsockopt(SOL_XDP, XDP_OPTIONS)`).
/// Fails on a descriptor that is not an AF_XDP socket.
pub fn socket_zero_copy(fd: RawFd) -> io::Result<bool> {
    let mut flags: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: `struct xdp_options` is one u32; `flags` and `len` outlive the call.
    let rc = unsafe { libc::getsockopt(fd, SOL_XDP, XDP_OPTIONS, (&mut flags as *mut u32).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(options_zero_copy(flags))
}

/// What to open: one queue of one interface.
#[derive(Debug, Clone)]
pub struct PortSpec {
    /// Interface name.
    pub ifname: String,
    /// Queue id.
    pub queue: u32,
    /// Zero-copy policy.
    pub zero_copy: ZeroCopy,
    /// Whether the XDP filter runs in generic mode (then zero-copy is impossible).
    pub generic_xdp: bool,
}

/// Creates a UMEM of `frames` frames and ring size `ring_size`; returns it with every frame descriptor.
pub fn create_umem(frames: u32, ring_size: u32) -> io::Result<(Umem, Vec<FrameDesc>)> {
    let ring = QueueSize::new(ring_size).map_err(|e| io::Error::other(format!("ring size: {e}")))?;
    let config = UmemConfig::builder()
        .frame_size(FrameSize::new(FRAME_SIZE).map_err(|e| io::Error::other(e.to_string()))?)
        .fill_queue_size(ring)
        .comp_queue_size(ring)
        .build()
        .map_err(|e| io::Error::other(e.to_string()))?;
    let frames = NonZeroU32::new(frames).ok_or_else(|| io::Error::other("datapath.umem_frames must be > 0"))?;
    Umem::new(config, frames, false).map_err(|e| {
        let cause = io_cause(&e);
        let hint = hint(&cause, false);
        io::Error::new(
            cause.kind(),
            format!(
                "creating the UMEM ({} frames of {FRAME_SIZE} bytes): {cause}{hint}",
                frames
            ),
        )
    })
}

/// Opens an AF_XDP socket on `spec` sharing `umem`. With zero-copy `auto`, zero-copy is tried first and copy
/// mode used if the driver refuses it.
pub fn open_port(umem: &Umem, spec: &PortSpec, ring_size: u32) -> Result<Port, PortError> {
    let attempts: &[bool] = match (spec.zero_copy, spec.generic_xdp) {
        (ZeroCopy::On, _) => &[true],
        (ZeroCopy::Off, _) | (ZeroCopy::Auto, true) => &[false],
        (ZeroCopy::Auto, false) => &[true, false],
    };
    let fail = |what: String, source: io::Error, zc: bool| PortError {
        iface: spec.ifname.clone(),
        queue: spec.queue,
        hint: hint(&source, zc),
        what,
        source,
    };
    let ifname = spec.ifname.parse().map_err(|_| {
        fail(
            "interface name".into(),
            io::Error::from(io::ErrorKind::InvalidInput),
            false,
        )
    })?;
    let ring = QueueSize::new(ring_size).map_err(|e| {
        fail(
            format!("ring size {e}"),
            io::Error::from(io::ErrorKind::InvalidInput),
            false,
        )
    })?;
    let mut last = None;
    for &zc in attempts {
        let mode = if zc {
            BindFlags::XDP_ZEROCOPY
        } else {
            BindFlags::XDP_COPY
        };
        let config = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(mode | BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        // SAFETY: each (interface, queue) pair is bound once per UMEM, and the program load is inhibited
        // (xlb attaches its own filter), as `Socket::new` requires.
        match unsafe { Socket::new(config, umem, &ifname, spec.queue) } {
            Ok((tx, rx, Some((fill, comp)))) => {
                let zero_copy = socket_zero_copy(rx.fd().as_raw_fd())
                    .map_err(|e| fail("reading the socket's mode (XDP_OPTIONS)".into(), e, zc))?;
                return Ok(Port {
                    ifname: spec.ifname.clone(),
                    queue: spec.queue,
                    zero_copy,
                    requested_zero_copy: zc,
                    rx,
                    tx,
                    fill,
                    comp,
                });
            }
            Ok((_, _, None)) => {
                return Err(fail(
                    "binding".into(),
                    io::Error::other("queue already bound from this UMEM"),
                    zc,
                ));
            }
            Err(e) => {
                let cause = io_cause(&e);
                tracing::debug!(iface = %spec.ifname, queue = spec.queue, zero_copy = zc, error = %cause, "AF_XDP bind attempt failed");
                last = Some(fail(
                    format!("{e} ({} mode)", if zc { "zero-copy" } else { "copy" }),
                    cause,
                    zc,
                ));
            }
        }
    }
    Err(last.expect("at least one attempt"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zero_copy_flag_is_read_from_the_options() {
        assert!(!options_zero_copy(0));
        assert!(options_zero_copy(XDP_OPTIONS_ZEROCOPY));
        assert!(options_zero_copy(XDP_OPTIONS_ZEROCOPY | 0x10));
        assert!(!options_zero_copy(0x10));
    }

    #[test]
    fn a_descriptor_that_is_not_an_af_xdp_socket_has_no_mode() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(socket_zero_copy(udp.as_raw_fd()).is_err());
    }
}
