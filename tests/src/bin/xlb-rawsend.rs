//! `xlb-rawsend IFACE HEX...`: sends each hex string as one raw Ethernet frame on IFACE (AF_PACKET).
//!
//! Integration tests use it to put malformed frames on a lab link, which no kernel socket would send.

use std::ffi::CString;
use std::process::ExitCode;

fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd-length hex string {s:?}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| format!("bad hex in {s:?}")))
        .collect()
}

fn send(iface: &str, frames: &[Vec<u8>]) -> Result<(), String> {
    let name = CString::new(iface).map_err(|_| "bad interface name".to_string())?;
    // SAFETY: plain libc calls with valid arguments; the fd is closed before returning.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            return Err(format!("interface {iface}: {}", std::io::Error::last_os_error()));
        }
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            return Err(format!("AF_PACKET socket: {}", std::io::Error::last_os_error()));
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        for frame in frames {
            let n = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if n < 0 {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                return Err(format!("sendto on {iface}: {e}"));
            }
        }
        libc::close(fd);
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((iface, hex)) = args.split_first() else {
        eprintln!("usage: xlb-rawsend IFACE HEX...");
        return ExitCode::FAILURE;
    };
    let frames: Result<Vec<_>, _> = hex.iter().map(|h| parse_hex(h)).collect();
    match frames.and_then(|f| send(iface, &f)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xlb-rawsend: {e}");
            ExitCode::FAILURE
        }
    }
}
