//! The XDP filter program (`bpf/xlb_filter.bpf.c`): loading, attaching, and its maps.
//!
//! One [`XdpFilter`] per interface. It sends frames for the appliance's own addresses to the AF_XDP socket of
//! the queue they arrived on and passes everything else to the kernel. Dropping the filter detaches it — only
//! if the program attached is still the one this filter attached (an atomic compare-and-detach in the kernel),
//! so an xlb never detaches another's program.
//!
//! Ownership: at attach, an XDP program already on the interface is replaced only if it is an xlb filter (a
//! left-over of a run that died: the caller holds the interface's instance lock, so no live xlb owns it);
//! any other program is refused. [`XdpFilter::check`] asks the kernel what is attached now, so the running
//! instance notices when its program was detached or replaced behind its back.

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

/// The filter program's name (`SEC("xdp") int xlb_filter`), which is also how a left-over one is recognised.
pub const PROGRAM_NAME: &str = "xlb_filter";

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

impl AttachedMode {
    /// The name used in logs, the stats document and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
        }
    }
}

/// What the kernel reports attached to an interface (`bpf_xdp_query`): the program in each mode (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelXdp {
    /// Program attached in driver (native) mode.
    pub drv_prog_id: u32,
    /// Program attached in generic (SKB) mode.
    pub skb_prog_id: u32,
    /// Program offloaded to the NIC.
    pub hw_prog_id: u32,
}

impl KernelXdp {
    /// Asks the kernel what is attached to `ifindex` (in the calling thread's network namespace).
    pub fn query(ifindex: i32) -> io::Result<KernelXdp> {
        // SAFETY: all-zero is a valid value of this plain C struct.
        let mut opts: sys::bpf_xdp_query_opts = unsafe { std::mem::zeroed() };
        opts.sz = std::mem::size_of::<sys::bpf_xdp_query_opts>();
        // SAFETY: `opts` is a valid, sized options struct the call fills in.
        let rc = unsafe { sys::bpf_xdp_query(ifindex, 0, &mut opts) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(-rc));
        }
        Ok(KernelXdp {
            drv_prog_id: opts.drv_prog_id,
            skb_prog_id: opts.skb_prog_id,
            hw_prog_id: opts.hw_prog_id,
        })
    }

    /// The mode `prog_id` is attached in, if it is attached.
    pub fn mode_of(&self, prog_id: u32) -> Option<AttachedMode> {
        if prog_id == 0 {
            None
        } else if self.drv_prog_id == prog_id {
            Some(AttachedMode::Native)
        } else if self.skb_prog_id == prog_id {
            Some(AttachedMode::Generic)
        } else {
            None
        }
    }

    /// The programs attached in driver and generic mode (in that order), with the flags that detach each.
    pub fn attached(&self) -> Vec<(u32, u32)> {
        [
            (self.drv_prog_id, XDP_FLAGS_DRV_MODE),
            (self.skb_prog_id, XDP_FLAGS_SKB_MODE),
        ]
        .into_iter()
        .filter(|&(id, _)| id != 0)
        .collect()
    }
}

/// Whether the filter is still attached, as the kernel says now ([`XdpFilter::check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachState {
    /// Our program is attached, in this mode.
    Attached(AttachedMode),
    /// No program is attached any more (e.g. `ip link set dev X xdp off`).
    Detached,
    /// Another program (this id) took the interface's place.
    Replaced(u32),
    /// The interface is gone or cannot be queried (the cause).
    Unknown(String),
}

impl AttachState {
    /// Whether the datapath of the interface works.
    pub fn is_attached(&self) -> bool {
        matches!(self, AttachState::Attached(_))
    }

    /// A short word for status, stats and metrics: `native`, `generic`, `detached`, `replaced`, `unknown`.
    pub fn word(&self) -> &'static str {
        match self {
            AttachState::Attached(mode) => mode.as_str(),
            AttachState::Detached => "detached",
            AttachState::Replaced(_) => "replaced",
            AttachState::Unknown(_) => "unknown",
        }
    }
}

impl std::fmt::Display for AttachState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachState::Attached(mode) => write!(f, "XDP filter attached ({})", mode.as_str()),
            AttachState::Detached => write!(
                f,
                "XDP filter detached by someone else: no XDP program on the interface"
            ),
            AttachState::Replaced(id) => write!(f, "XDP filter replaced by another program (id {id})"),
            AttachState::Unknown(cause) => write!(f, "cannot query the interface's XDP program: {cause}"),
        }
    }
}

/// The name and id of a loaded BPF program (`None` if it is gone).
fn prog_name(id: u32) -> Option<String> {
    // SAFETY: plain syscall wrapper.
    let fd = unsafe { sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return None;
    }
    let name = prog_info(fd).map(|info| c_name(&info.name));
    // SAFETY: we own `fd`.
    unsafe { libc::close(fd) };
    name
}

fn prog_info(fd: RawFd) -> Option<sys::bpf_prog_info> {
    // SAFETY: all-zero is a valid value of this plain C struct, as the call requires.
    let mut info: sys::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<sys::bpf_prog_info>() as u32;
    // SAFETY: `info` has `len` bytes.
    let rc = unsafe { sys::bpf_prog_get_info_by_fd(fd, &mut info, &mut len) };
    (rc == 0).then_some(info)
}

/// A NUL-padded C name as text.
fn c_name(raw: &[std::os::raw::c_char]) -> String {
    let bytes: Vec<u8> = raw.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Detaches the program of `prog_fd` from `ifindex` in the mode of `flags`, only if it is still the one attached.
fn detach_if_still(ifindex: i32, flags: u32, prog_fd: RawFd) -> io::Result<()> {
    // `bpf_xdp_attach_opts` with its tail padding spelled out: libbpf refuses options whose padding is not zero,
    // and Rust does not keep padding bytes.
    #[repr(C)]
    struct AttachOpts {
        sz: usize,
        old_prog_fd: std::os::raw::c_int,
        zero: u32,
    }
    const _: () = assert!(std::mem::size_of::<AttachOpts>() == std::mem::size_of::<sys::bpf_xdp_attach_opts>());
    let opts = AttachOpts {
        sz: std::mem::size_of::<AttachOpts>(),
        old_prog_fd: prog_fd,
        zero: 0,
    };
    // SAFETY: valid options; with `old_prog_fd` set libbpf asks the kernel to detach only that program
    // (XDP_FLAGS_REPLACE: EEXIST if another one is attached).
    let rc = unsafe { sys::bpf_xdp_detach(ifindex, flags, (&opts as *const AttachOpts).cast()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(-rc));
    }
    Ok(())
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
    prog_fd: RawFd,
    prog_id: u32,
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
            prog_fd: -1,
            prog_id: 0,
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
        filter.prog_fd = prog_fd;
        filter.prog_id = prog_info(prog_fd).map(|i| i.id).unwrap_or(0);

        // Replace an xlb filter a previous run left (the caller holds the interface lock, so its owner is dead);
        // refuse anything else.
        let present = KernelXdp::query(ifindex).map_err(|e| err("querying the attached XDP program", e))?;
        for (id, flags) in present.attached() {
            let name = prog_name(id).unwrap_or_default();
            if name != PROGRAM_NAME {
                return Err(FilterError {
                    what: "another XDP program is attached",
                    iface: ifname.to_string(),
                    source: io::Error::other(format!("program id {id} named {name:?}")),
                    hint: " (xlb does not replace programs it did not attach: remove it first, e.g. `ip link set dev \
                           IFACE xdp off` / `xdpgeneric off`)",
                });
            }
            // SAFETY: plain syscall wrapper.
            let old_fd = unsafe { sys::bpf_prog_get_fd_by_id(id) };
            if old_fd >= 0 {
                let gone = detach_if_still(ifindex, flags, old_fd);
                // SAFETY: we own `old_fd`.
                unsafe { libc::close(old_fd) };
                match gone {
                    Ok(()) => tracing::warn!(
                        iface = ifname,
                        prog_id = id,
                        "replaced an XDP filter left by an earlier xlb run"
                    ),
                    Err(e) => {
                        tracing::debug!(iface = ifname, prog_id = id, error = %e, "left-over filter went away meanwhile")
                    }
                }
            }
        }

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
            // Attach only where nothing is: a program that appeared meanwhile is not replaced.
            let no_replace = 1u32; // XDP_FLAGS_UPDATE_IF_NOEXIST
                                   // SAFETY: valid ifindex and program fd.
            let rc = unsafe { sys::bpf_xdp_attach(ifindex, prog_fd, flags | no_replace, std::ptr::null()) };
            if rc == 0 {
                filter.flags = flags;
                // The mode in effect is what the kernel says, not what was asked.
                filter.mode = KernelXdp::query(ifindex)
                    .ok()
                    .and_then(|k| k.mode_of(filter.prog_id))
                    .unwrap_or(attached);
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

    /// The kernel's id of the filter program.
    pub fn prog_id(&self) -> u32 {
        self.prog_id
    }

    /// Asks the kernel whether this filter is still what is attached to its interface (a few syscalls: call it
    /// from the control plane, not per packet). Must run in the filter's network namespace.
    pub fn check(&self) -> AttachState {
        let cname = CString::new(self.ifname.as_str()).expect("checked at attach");
        // SAFETY: plain libc call with a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
        if ifindex != self.ifindex {
            return AttachState::Unknown(format!("interface {} is gone", self.ifname));
        }
        match KernelXdp::query(self.ifindex) {
            Err(e) => AttachState::Unknown(e.to_string()),
            Ok(k) => match k.mode_of(self.prog_id) {
                Some(mode) => AttachState::Attached(mode),
                None => match k.attached().first() {
                    Some(&(id, _)) => AttachState::Replaced(id),
                    None => AttachState::Detached,
                },
            },
        }
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
        if self.flags != 0 {
            // Only our own program: if another took its place, it is not ours to remove.
            match detach_if_still(self.ifindex, self.flags, self.prog_fd) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => match KernelXdp::query(self.ifindex) {
                    Ok(k) if k.attached().is_empty() => {
                        tracing::warn!(iface = %self.ifname, "the XDP filter was already detached by someone else")
                    }
                    _ => {
                        tracing::warn!(iface = %self.ifname, "the XDP program attached now is not xlb's: left in place")
                    }
                },
                Err(e) => tracing::warn!(iface = %self.ifname, error = %e, "detaching the XDP filter failed"),
            }
        }
        // SAFETY: closing the object we own.
        unsafe { sys::bpf_object__close(self.object.as_ptr()) };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_program_is_found_in_the_mode_the_kernel_reports() {
        let k = KernelXdp {
            drv_prog_id: 7,
            skb_prog_id: 0,
            hw_prog_id: 0,
        };
        assert_eq!(k.mode_of(7), Some(AttachedMode::Native));
        assert_eq!(k.mode_of(8), None);
        assert_eq!(k.mode_of(0), None);
        assert_eq!(k.attached(), vec![(7, XDP_FLAGS_DRV_MODE)]);
        let k = KernelXdp {
            drv_prog_id: 0,
            skb_prog_id: 9,
            hw_prog_id: 0,
        };
        assert_eq!(k.mode_of(9), Some(AttachedMode::Generic));
        assert_eq!(k.attached(), vec![(9, XDP_FLAGS_SKB_MODE)]);
        assert!(KernelXdp::default().attached().is_empty());
    }

    #[test]
    fn attach_states_have_short_words_and_say_what_happened() {
        assert_eq!(AttachState::Attached(AttachedMode::Native).word(), "native");
        assert_eq!(AttachState::Attached(AttachedMode::Generic).word(), "generic");
        assert_eq!(AttachState::Detached.word(), "detached");
        assert_eq!(AttachState::Replaced(3).word(), "replaced");
        assert!(AttachState::Attached(AttachedMode::Native).is_attached());
        assert!(!AttachState::Detached.is_attached());
        assert!(!AttachState::Unknown("gone".into()).is_attached());
        assert!(AttachState::Replaced(3).to_string().contains("id 3"));
    }

    #[test]
    fn c_names_stop_at_the_first_nul() {
        let mut raw = [0 as std::os::raw::c_char; 16];
        for (i, b) in PROGRAM_NAME.bytes().enumerate() {
            raw[i] = b as std::os::raw::c_char;
        }
        assert_eq!(c_name(&raw), PROGRAM_NAME);
    }
}
