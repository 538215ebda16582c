//! Where a notification (a job's callback, an alert's webhook) may go: by default public
//! addresses only. Loopback, private (RFC 1918, fc00::/7), link-local (169.254/16 with the
//! cloud metadata address, fe80::/10), CGNAT (100.64/10), unspecified, multicast, broadcast
//! and reserved addresses, and the IPv4-mapped (and NAT64, 6to4) forms of these, are refused
//! unless `[callbacks] allow` names them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What `[callbacks] allow` lets through besides public addresses: CIDR blocks (a bare
/// address is a block of one) and host names (`*.example.com`: any name under it).
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    nets: Vec<(IpAddr, u8)>,
    names: Vec<String>,
}

impl Allowlist {
    pub fn add(&mut self, entry: &str) -> Result<(), &'static str> {
        const WHAT: &str = "is not an address, a CIDR block (like \"10.0.0.0/8\") or a host name \
                            (like \"hooks.internal.example\" or \"*.internal.example\")";
        let entry = entry.trim();
        if let Some((addr, bits)) = entry.split_once('/') {
            let ip: IpAddr = addr.parse().map_err(|_| WHAT)?;
            let bits: u8 = bits.parse().map_err(|_| WHAT)?;
            if bits > if ip.is_ipv4() { 32 } else { 128 } {
                return Err(WHAT);
            }
            self.nets.push((ip, bits));
        } else if let Ok(ip) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
            self.nets.push((ip, if ip.is_ipv4() { 32 } else { 128 }));
        } else {
            let name = entry.strip_prefix("*.").unwrap_or(entry);
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                });
            if !valid {
                return Err(WHAT);
            }
            self.names.push(entry.to_ascii_lowercase());
        }
        Ok(())
    }

    fn allows_name(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            Some(parent) => host.ends_with(&format!(".{parent}")),
            None => *n == host,
        })
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets
            .iter()
            .any(|(net, bits)| in_block(ip, canonical(*net), *bits))
    }

    /// Whether a connection to `ip`, found for `host` (the URL's host), may be made.
    pub fn permits(&self, host: &str, ip: IpAddr) -> bool {
        self.allows_name(host) || self.allows_ip(ip) || !denied_by_default(ip)
    }

    /// The submit-time check of a URL: its scheme, and its host when that is an address
    /// (or `localhost`) the policy refuses. Names are checked when connecting.
    pub fn check_url(&self, url: &str) -> Result<url::Url, String> {
        let parsed = url::Url::parse(url).map_err(|_| "must be an http:// or https:// URL")?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err("must be an http:// or https:// URL".into());
        }
        let refused = |what: &str| {
            format!(
                "points to {what}, which notifications may not reach (private, loopback and \
                 link-local networks are refused unless the operator allows them in \
                 [callbacks] allow)"
            )
        };
        match parsed.host() {
            None => return Err("must be an http:// or https:// URL with a host".into()),
            Some(url::Host::Ipv4(ip)) if !self.permits("", IpAddr::V4(ip)) => {
                return Err(refused(&format!("the address {ip}")))
            }
            Some(url::Host::Ipv6(ip)) if !self.permits("", IpAddr::V6(ip)) => {
                return Err(refused(&format!("the address {ip}")))
            }
            Some(url::Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if (name == "localhost" || name.ends_with(".localhost"))
                    && !self.allows_name(&name)
                    && !self.allows_ip(IpAddr::V4(Ipv4Addr::LOCALHOST))
                {
                    return Err(refused(&format!("\"{name}\"")));
                }
            }
            _ => {}
        }
        Ok(parsed)
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

fn in_block(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Addresses refused unless allowed: everything but the public internet.
pub fn denied_by_default(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => denied_v4(v4),
        IpAddr::V6(v6) => denied_v6(v6),
    }
}

fn denied_v4(ip: Ipv4Addr) -> bool {
    const BLOCKS: &[([u8; 4], u8)] = &[
        ([0, 0, 0, 0], 8),      // "this network", the unspecified address
        ([10, 0, 0, 0], 8),     // private
        ([100, 64, 0, 0], 10),  // carrier-grade NAT
        ([127, 0, 0, 0], 8),    // loopback
        ([169, 254, 0, 0], 16), // link-local, cloud metadata
        ([172, 16, 0, 0], 12),  // private
        ([192, 0, 0, 0], 24),   // IETF protocol assignments
        ([192, 168, 0, 0], 16), // private
        ([198, 18, 0, 0], 15),  // benchmarking
        ([224, 0, 0, 0], 4),    // multicast
        ([240, 0, 0, 0], 4),    // reserved, broadcast
    ];
    BLOCKS
        .iter()
        .any(|(net, bits)| in_block(IpAddr::V4(ip), IpAddr::V4(Ipv4Addr::from(*net)), *bits))
}

fn denied_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let embedded = |hi: usize| {
        Ipv4Addr::new(
            (s[hi] >> 8) as u8,
            s[hi] as u8,
            (s[hi + 1] >> 8) as u8,
            s[hi + 1] as u8,
        )
    };
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        // IPv4-compatible (deprecated) and NAT64 forms reach the IPv4 address inside.
        || (s[..6] == [0; 6] && denied_v4(embedded(6)))
        || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && denied_v4(embedded(6)))
        || (s[0] == 0x2002 && denied_v4(embedded(1))) // 6to4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_addresses_are_refused_by_default() {
        for a in [
            "127.0.0.1",
            "127.5.6.7",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "::127.0.0.1",
        ] {
            assert!(denied_by_default(ip(a)), "{a} should be refused");
        }
        for a in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!denied_by_default(ip(a)), "{a} should be allowed");
        }
    }

    #[test]
    fn the_allowlist_takes_blocks_addresses_and_names() {
        let mut allow = Allowlist::default();
        for entry in [
            "127.0.0.1/32",
            "10.0.0.0/8",
            "fd00::/8",
            "hooks.internal.example",
            "*.corp.example",
        ] {
            allow.add(entry).unwrap();
        }
        let a = &allow;
        assert!(a.permits("x", ip("127.0.0.1")));
        assert!(
            a.permits("x", ip("::ffff:127.0.0.1")),
            "mapped forms match too"
        );
        assert!(!a.permits("x", ip("127.0.0.2")));
        assert!(a.permits("x", ip("10.200.0.1")));
        assert!(a.permits("x", ip("fd00::5")));
        assert!(!a.permits("x", ip("192.168.0.1")));
        assert!(a.permits("hooks.internal.example", ip("192.168.0.1")));
        assert!(a.permits("HOOKS.internal.example.", ip("192.168.0.1")));
        assert!(a.permits("a.b.corp.example", ip("192.168.0.1")));
        assert!(!a.permits("corp.example", ip("192.168.0.1")));
        assert!(!a.permits("evilcorp.example", ip("192.168.0.1")));
        assert!(a.permits("anything", ip("8.8.8.8")), "public stays allowed");
    }

    #[test]
    fn literal_addresses_are_checked_at_submit() {
        let a = Allowlist::default();
        for bad in [
            "http://127.0.0.1:6379/",
            "http://[::1]/x",
            "http://[::ffff:169.254.169.254]/latest/meta-data",
            "http://169.254.169.254/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://localhost:5432/",
            "http://db.localhost/",
            "https://10.0.0.1/",
        ] {
            assert!(a.check_url(bad).is_err(), "{bad} should be refused");
        }
        assert!(a.check_url("ftp://example.com/").is_err());
        assert!(a.check_url("https://hooks.example.com/cb").is_ok());
        assert!(a.check_url("http://8.8.8.8/").is_ok());
        let mut local = Allowlist::default();
        local.add("127.0.0.0/8").unwrap();
        assert!(local.check_url("http://127.0.0.1:9/").is_ok());
        assert!(local.check_url("http://localhost:9/").is_ok());
    }
}
