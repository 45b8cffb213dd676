//! IPv4 networks as written in the config (`198.18.0.10/24`).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An address with its prefix length: the appliance's own address and the subnet it is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    /// The address itself.
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Ipv4Net {
    /// The network mask as a host-order integer.
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(ip) & self.mask()) == (u32::from(self.addr) & self.mask())
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, p.parse::<u8>().map_err(|_| format!("bad prefix length in {s:?}"))?),
            None => (s, 32),
        };
        if prefix > 32 {
            return Err(format!("prefix length {prefix} > 32 in {s:?}"));
        }
        let addr = addr.parse().map_err(|_| format!("bad IPv4 address in {s:?}"))?;
        Ok(Ipv4Net { addr, prefix })
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_contains() {
        let n: Ipv4Net = "198.18.0.10/24".parse().unwrap();
        assert_eq!(n.addr, Ipv4Addr::new(198, 18, 0, 10));
        assert!(n.contains(Ipv4Addr::new(198, 18, 0, 200)));
        assert!(!n.contains(Ipv4Addr::new(198, 18, 1, 1)));
        let host: Ipv4Net = "198.18.0.100".parse().unwrap();
        assert_eq!(host.prefix, 32);
        assert!(host.contains(Ipv4Addr::new(198, 18, 0, 100)) && !host.contains(Ipv4Addr::new(198, 18, 0, 101)));
        assert!("198.18.0.1/33".parse::<Ipv4Net>().is_err());
        assert!("198.18.0/24".parse::<Ipv4Net>().is_err());
        assert!("0.0.0.0/0"
            .parse::<Ipv4Net>()
            .unwrap()
            .contains(Ipv4Addr::new(1, 2, 3, 4)));
    }
}
