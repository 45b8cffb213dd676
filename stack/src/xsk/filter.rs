//! The XDP filter program (`bpf/xlb_filter.bpf.c`): loading, attaching, and its maps.
//!
//! One [`XdpFilter`] per interface. It sends frames for the appliance's own addresses to the AF_XDP socket of
//! the queue they arrived on and passes everything else to the kernel. Dropping the filter detaches it.

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::ptr::NonNull;

use libxdp_sys as sys;

use crate::config::XdpMode;

static FILTER_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xlb_filter.bpf.o"));

/// Linux XDP attach flags (uapi `if_link.h`).
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// Kind of an owned address, stored as the map value (the filter treats them alike for now).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum AddrKind {
    /// A local IP of the appliance.
    Local = 1,
    /// A virtual IP served by a listener.
    Vip = 2,
    /// A multicast group (HA).
    Group = 4,
}

/// Verdict counters of the filter, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilterStats {
    /// Frames redirected to an AF_XDP socket.
    pub to_socket: u64,
    /// Frames passed to the kernel: not for the appliance.
    pub passed_not_ours: u64,
    /// Frames for the appliance passed to the kernel because no socket serves their queue.
    pub passed_no_socket: u64,
    /// Frames too short to classify, passed to the kernel.
    pub passed_malformed: u64,
}

/// The XDP attach mode actually in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachedMode {
    /// Driver mode.
    Native,
    /// Generic (SKB) mode.
    Generic,
}

/// An error from the filter, with what was being done and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("{what} on interface {iface}: {source}{hint}")]
pub struct FilterError {
    what: &'static str,
    iface: String,
    source: io::Error,
    hint: &'static str,
}

fn hint_for(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (needs root or CAP_NET_ADMIN + CAP_BPF; check also kernel.unprivileged_bpf_disabled and the memlock limit)"
        }
        Some(libc::ENODEV) => " (no such interface)",
        Some(libc::EOPNOTSUPP) => " (the driver does not support this XDP mode; try xdp_mode = \"generic\")",
        Some(libc::EBUSY) | Some(libc::EEXIST) => " (another XDP program is attached in a different mode)",
        _ => "",
    }
}

/// The filter program loaded and attached to one interface.
///
/// Attaching and detaching use the network namespace of the calling thread: drop the filter on a thread in
/// the namespace it was attached in (xlb does both on its main thread).
pub struct XdpFilter {
    object: NonNull<sys::bpf_object>,
    ifname: String,
    ifindex: i32,
    flags: u32,
    mode: AttachedMode,
    xsks_fd: RawFd,
    addrs_fd: RawFd,
    stats_fd: RawFd,
}

// SAFETY: the libbpf object has no thread affinity. Methods taking `&self` only issue bpf(2) map syscalls on
// file descriptors, which the kernel serialises; the object itself is touched only in `attach` and `drop`.
unsafe impl Send for XdpFilter {}
// SAFETY: see above.
unsafe impl Sync for XdpFilter {}

impl XdpFilter {
    /// Loads the filter and attaches it to `ifname` in `mode` (auto tries native, then generic). An existing
    /// XDP program on the interface (left by a crashed run) is replaced.
    pub fn attach(ifname: &str, mode: XdpMode) -> Result<XdpFilter, FilterError> {
        let err = |what: &'static str, source: io::Error| FilterError {
            hint: hint_for(&source),
            what,
            iface: ifname.to_string(),
            source,
        };
        let cname = CString::new(ifname)
            .map_err(|_| err("bad interface name", io::Error::from(io::ErrorKind::InvalidInput)))?;
        // SAFETY: plain libc call with a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
        if ifindex == 0 {
            return Err(err("looking up the interface", io::Error::last_os_error()));
        }
        // SAFETY: the buffer is a static ELF object that outlives the call; libbpf copies what it keeps.
        let object =
            unsafe { sys::bpf_object__open_mem(FILTER_OBJECT.as_ptr().cast(), FILTER_OBJECT.len(), std::ptr::null()) };
        let object =
            NonNull::new(object).ok_or_else(|| err("opening the embedded BPF object", io::Error::last_os_error()))?;
        let mut filter = XdpFilter {
            object,
            ifname: ifname.to_string(),
            ifindex,
            flags: 0,
            mode: AttachedMode::Generic,
            xsks_fd: -1,
            addrs_fd: -1,
            stats_fd: -1,
        };
        // SAFETY: `object` is a valid, opened object.
        let rc = unsafe { sys::bpf_object__load(object.as_ptr()) };
        if rc != 0 {
            return Err(err(
                "loading the XDP filter into the kernel",
                io::Error::from_raw_os_error(-rc),
            ));
        }
        filter.xsks_fd = filter.map_fd("xlb_xsks").map_err(|e| err("finding map xlb_xsks", e))?;
        filter.addrs_fd = filter
            .map_fd("xlb_addrs")
            .map_err(|e| err("finding map xlb_addrs", e))?;
        filter.stats_fd = filter
            .map_fd("xlb_stats")
            .map_err(|e| err("finding map xlb_stats", e))?;
        let name = CString::new("xlb_filter").expect("no NUL");
        // SAFETY: valid object and C string.
        let prog = unsafe { sys::bpf_object__find_program_by_name(object.as_ptr(), name.as_ptr()) };
        if prog.is_null() {
            return Err(err(
                "finding program xlb_filter",
                io::Error::from_raw_os_error(libc::ENOENT),
            ));
        }
        // SAFETY: `prog` belongs to the loaded object.
        let prog_fd = unsafe { sys::bpf_program__fd(prog) };

        let attempts: &[(u32, AttachedMode)] = match mode {
            XdpMode::Native => &[(XDP_FLAGS_DRV_MODE, AttachedMode::Native)],
            XdpMode::Generic => &[(XDP_FLAGS_SKB_MODE, AttachedMode::Generic)],
            XdpMode::Auto => &[
                (XDP_FLAGS_DRV_MODE, AttachedMode::Native),
                (XDP_FLAGS_SKB_MODE, AttachedMode::Generic),
            ],
        };
        let mut last = None;
        for &(flags, attached) in attempts {
            // Replace whatever a previous run left in the other mode, so a restart after a crash works.
            // SAFETY: plain syscall wrappers on a valid ifindex.
            unsafe {
                sys::bpf_xdp_detach(ifindex, XDP_FLAGS_DRV_MODE, std::ptr::null());
                sys::bpf_xdp_detach(ifindex, XDP_FLAGS_SKB_MODE, std::ptr::null());
            }
            // SAFETY: valid ifindex and program fd.
            let rc = unsafe { sys::bpf_xdp_attach(ifindex, prog_fd, flags, std::ptr::null()) };
            if rc == 0 {
                filter.flags = flags;
                filter.mode = attached;
                return Ok(filter);
            }
            tracing::debug!(iface = ifname, ?attached, errno = -rc, "XDP attach attempt failed");
            last = Some(io::Error::from_raw_os_error(-rc));
        }
        Err(err("attaching the XDP filter", last.expect("at least one attempt")))
    }

    fn map_fd(&self, name: &str) -> io::Result<RawFd> {
        let cname = CString::new(name).expect("no NUL");
        // SAFETY: valid object and C string.
        let map = unsafe { sys::bpf_object__find_map_by_name(self.object.as_ptr(), cname.as_ptr()) };
        if map.is_null() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        // SAFETY: `map` belongs to the loaded object.
        Ok(unsafe { sys::bpf_map__fd(map) })
    }

    /// The mode the filter is attached in.
    pub fn mode(&self) -> AttachedMode {
        self.mode
    }

    /// The interface index.
    pub fn ifindex(&self) -> i32 {
        self.ifindex
    }

    /// Directs frames received on `queue` to the AF_XDP socket `fd`.
    pub fn register_socket(&self, queue: u32, fd: RawFd) -> io::Result<()> {
        self.update(self.xsks_fd, &queue, &(fd as u32))
    }

    /// Makes the filter send frames for `addr` to userspace.
    pub fn add_address(&self, addr: Ipv4Addr, kind: AddrKind) -> io::Result<()> {
        self.update(self.addrs_fd, &u32::from_ne_bytes(addr.octets()), &(kind as u32))
    }

    /// Returns frames for `addr` to the kernel.
    pub fn remove_address(&self, addr: Ipv4Addr) -> io::Result<()> {
        let key = u32::from_ne_bytes(addr.octets());
        // SAFETY: key points to a u32 as the map's key type.
        let rc = unsafe { sys::bpf_map_delete_elem(self.addrs_fd, (&key as *const u32).cast()) };
        if rc != 0 && -rc != libc::ENOENT {
            return Err(io::Error::from_raw_os_error(-rc));
        }
        Ok(())
    }

    fn update<K, V>(&self, fd: RawFd, key: &K, value: &V) -> io::Result<()> {
        // SAFETY: key and value point to values of the map's key and value types (u32 in every xlb map).
        let rc = unsafe { sys::bpf_map_update_elem(fd, (key as *const K).cast(), (value as *const V).cast(), 0) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(-rc));
        }
        Ok(())
    }

    /// Reads the filter's verdict counters.
    pub fn stats(&self) -> io::Result<FilterStats> {
        let cpus = possible_cpus()?;
        let mut sums = [0u64; 4];
        let mut values = vec![0u64; cpus];
        for (key, sum) in sums.iter_mut().enumerate() {
            let key = key as u32;
            // SAFETY: a per-CPU array lookup writes one u64 per possible CPU into `values`.
            let rc = unsafe {
                sys::bpf_map_lookup_elem(self.stats_fd, (&key as *const u32).cast(), values.as_mut_ptr().cast())
            };
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(-rc));
            }
            *sum = values.iter().sum();
        }
        Ok(FilterStats {
            to_socket: sums[0],
            passed_not_ours: sums[1],
            passed_no_socket: sums[2],
            passed_malformed: sums[3],
        })
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        // SAFETY: detaching by ifindex and closing the object we own.
        unsafe {
            let rc = sys::bpf_xdp_detach(self.ifindex, self.flags, std::ptr::null());
            if rc != 0 {
                tracing::warn!(iface = %self.ifname, error = %io::Error::from_raw_os_error(-rc), "detaching the XDP filter failed");
            }
            sys::bpf_object__close(self.object.as_ptr());
        }
    }
}

/// Number of possible CPUs (the size of per-CPU map values).
fn possible_cpus() -> io::Result<usize> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    // Format: "0-3" or "0,2-5".
    let mut n = 0;
    for part in s.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let parse = |x: &str| {
            x.parse::<usize>()
                .map_err(|_| io::Error::other(format!("bad cpu list {s:?}")))
        };
        n = n.max(parse(b)? + 1).max(parse(a)? + 1);
    }
    Ok(n)
}
