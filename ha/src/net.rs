//! Kernel-socket helpers of HA.
//!
//! The appliance carries its HA traffic on the AF_XDP datapath (see [`crate::frames`]); from the kernel it only
//! needs [`MulticastMembership`], so the NIC accepts the groups' multicast MACs. [`VrrpSocket`] and
//! [`GarpSocket`] run the VRRP core over kernel sockets, without a datapath: the keepalived interop test of the
//! core uses them.

use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use xlb_stack::wire::build;
use xlb_stack::wire::EthernetAddress;

use crate::vrrp::{VRRP_MULTICAST, VRRP_PROTOCOL, VRRP_TTL};

fn check(ret: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(ret)
}

fn in_addr(ip: Ipv4Addr) -> libc::in_addr {
    libc::in_addr {
        s_addr: u32::from_ne_bytes(ip.octets()),
    }
}

fn setsockopt<T>(fd: libc::c_int, level: libc::c_int, name: libc::c_int, value: &T, what: &str) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the size passed.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    check(ret, what).map(drop)
}

/// The index of interface `ifname` in the calling thread's network namespace.
pub fn ifindex(ifname: &str) -> io::Result<libc::c_int> {
    let name = std::ffi::CString::new(ifname).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `name` is NUL-terminated.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("interface {ifname}: {e}")));
    }
    Ok(index as libc::c_int)
}

fn bind_to_device(fd: libc::c_int, ifname: &str) -> io::Result<()> {
    let dev = std::ffi::CString::new(ifname).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `dev` is a valid buffer of the length passed.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            dev.as_ptr().cast(),
            dev.as_bytes_with_nul().len() as libc::socklen_t,
        )
    };
    check(ret, "SO_BINDTODEVICE").map(drop)
}

fn join(fd: libc::c_int, group: Ipv4Addr, source: Ipv4Addr, index: libc::c_int) -> io::Result<()> {
    let mreq = libc::ip_mreqn {
        imr_multiaddr: in_addr(group),
        imr_address: in_addr(source),
        imr_ifindex: index,
    };
    setsockopt(
        fd,
        libc::IPPROTO_IP,
        libc::IP_ADD_MEMBERSHIP,
        &mreq,
        "IP_ADD_MEMBERSHIP",
    )?;
    setsockopt(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &mreq, "IP_MULTICAST_IF")?;
    let zero: libc::c_int = 0;
    setsockopt(
        fd,
        libc::IPPROTO_IP,
        libc::IP_MULTICAST_LOOP,
        &zero,
        "IP_MULTICAST_LOOP",
    )
}

/// Membership of multicast groups on one interface, held by a UDP socket that never reads: it makes the NIC
/// accept the groups' multicast MACs, while the XDP filter hands the frames themselves to the datapath.
pub struct MulticastMembership {
    _fd: OwnedFd,
}

impl MulticastMembership {
    /// Joins `groups` on `ifname`.
    pub fn join(ifname: &str, groups: &[Ipv4Addr]) -> io::Result<MulticastMembership> {
        // SAFETY: plain socket(2) call.
        let raw = check(
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) },
            "socket(AF_INET, SOCK_DGRAM)",
        )?;
        // SAFETY: `raw` is a fresh descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let index = ifindex(ifname)?;
        for group in groups {
            join(fd.as_raw_fd(), *group, Ipv4Addr::UNSPECIFIED, index)?;
        }
        Ok(MulticastMembership { _fd: fd })
    }
}

/// Waits until `fd` is readable or `timeout` passes; returns whether it is readable.
fn wait_readable(fd: libc::c_int, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(0, 1000) as libc::c_int;
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(err);
    }
    Ok(n > 0)
}

/// A raw IPv4 socket for protocol 112 on one interface, member of 224.0.0.18. It sends whole IPv4 packets
/// (`IP_HDRINCL`: the VRRP core writes TTL 255 and the source) and receives them with their header.
pub struct VrrpSocket {
    fd: OwnedFd,
}

impl VrrpSocket {
    /// Opens the socket on `ifname`, joining the VRRP group from `source`.
    pub fn open(ifname: &str, source: Ipv4Addr) -> io::Result<VrrpSocket> {
        // SAFETY: plain socket(2) call.
        let raw = check(
            unsafe {
                libc::socket(
                    libc::AF_INET,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    libc::c_int::from(VRRP_PROTOCOL),
                )
            },
            "socket(AF_INET, SOCK_RAW, 112)",
        )?;
        // SAFETY: `raw` is a fresh descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let index = ifindex(ifname)?;
        bind_to_device(fd.as_raw_fd(), ifname)?;
        let one: libc::c_int = 1;
        let ttl = libc::c_int::from(VRRP_TTL);
        setsockopt(fd.as_raw_fd(), libc::IPPROTO_IP, libc::IP_HDRINCL, &one, "IP_HDRINCL")?;
        join(fd.as_raw_fd(), VRRP_MULTICAST, source, index)?;
        setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_TTL,
            &ttl,
            "IP_MULTICAST_TTL",
        )?;
        Ok(VrrpSocket { fd })
    }

    /// Sends one IPv4 packet (header included) to 224.0.0.18.
    pub fn send(&self, packet: &[u8]) -> io::Result<()> {
        let dst = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: in_addr(VRRP_MULTICAST),
            sin_zero: [0; 8],
        };
        // SAFETY: `packet` and `dst` are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&dst as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        check(n as libc::c_int, "sendto(224.0.0.18)").map(drop)
    }

    /// One received IPv4 packet (header included), or `None` when there is none.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(err);
        }
        Ok(Some(n as usize))
    }

    /// Waits for a packet for at most `timeout`.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        wait_readable(self.fd.as_raw_fd(), timeout)
    }
}

/// An `AF_PACKET` socket that sends gratuitous ARP requests on one interface.
pub struct GarpSocket {
    fd: OwnedFd,
    index: libc::c_int,
    mac: EthernetAddress,
}

impl GarpSocket {
    /// Opens the socket on `ifname`; announcements carry `mac`.
    pub fn open(ifname: &str, mac: EthernetAddress) -> io::Result<GarpSocket> {
        // SAFETY: plain socket(2) call.
        let raw = check(
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) },
            "socket(AF_PACKET, SOCK_RAW, 0)",
        )?;
        // SAFETY: `raw` is a fresh descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(GarpSocket {
            fd,
            index: ifindex(ifname)?,
            mac,
        })
    }

    /// Announces that `ip` is at this interface's MAC (a broadcast ARP request for itself).
    pub fn send(&self, ip: Ipv4Addr) -> io::Result<()> {
        let mut frame = [0u8; 64];
        let n = build::arp(
            &mut frame,
            EthernetAddress::BROADCAST,
            1,
            (self.mac, ip),
            (EthernetAddress([0; 6]), ip),
        );
        // SAFETY: sockaddr_ll is plain data; zero is a valid starting value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
        addr.sll_ifindex = self.index;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&EthernetAddress::BROADCAST.0);
        // SAFETY: `frame` and `addr` are valid for the lengths passed.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                n,
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        check(sent as libc::c_int, "sendto(AF_PACKET) of a gratuitous ARP").map(drop)
    }
}
