//! Which addresses a preview fetch may connect to: public unicast only.
//!
//! A message's URL is chosen by whoever sends the message, so without this filter the
//! server would fetch, on a stranger's behalf, whatever its own network reaches: the
//! cloud's metadata service (169.254.169.254, fd00:ec2::254), databases on 10.x, admin
//! pages on localhost (SSRF). The filter runs on the addresses a host name *resolved to*,
//! and the fetcher connects to exactly the address it checked, so a name that resolves to
//! a public address once and to a private one the next time (DNS rebinding) gains nothing.
//!
//! IPv4: everything but the special-purpose blocks of RFC 6890 and their successors.
//! IPv6: global unicast (2000::/3) only, minus its documentation, benchmarking and
//! protocol-assignment blocks; the forms that carry an IPv4 address inside (mapped,
//! compatible, NAT64, 6to4) are judged by that IPv4 address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether a fetch may connect to `ip`.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// IPv4 blocks that are not the public internet: (network, prefix length).
const V4_BLOCKED: &[([u8; 4], u8)] = &[
    ([0, 0, 0, 0], 8),       // "this network", unspecified
    ([10, 0, 0, 0], 8),      // private
    ([100, 64, 0, 0], 10),   // carrier-grade NAT (also Alibaba's metadata, 100.100.100.200)
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local: AWS/GCP/Azure metadata at 169.254.169.254
    ([172, 16, 0, 0], 12),   // private
    ([192, 0, 0, 0], 24),    // IETF protocol assignments (Oracle metadata 192.0.0.192)
    ([192, 0, 2, 0], 24),    // documentation (TEST-NET-1)
    ([192, 88, 99, 0], 24),  // 6to4 relay anycast (deprecated)
    ([192, 168, 0, 0], 16),  // private
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation (TEST-NET-2)
    ([203, 0, 113, 0], 24),  // documentation (TEST-NET-3)
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, and 255.255.255.255 broadcast
];

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let bits = u32::from(ip);
    !V4_BLOCKED.iter().any(|(net, len)| {
        let mask = u32::MAX << (32 - u32::from(*len));
        bits & mask == u32::from_be_bytes(*net) & mask
    })
}

/// IPv6 blocks inside 2000::/3 that are not the public internet.
const V6_BLOCKED: &[(u128, u8)] = &[
    (0x2001_0000 << 96, 23), // IETF protocol assignments (Teredo, ORCHID, ...)
    (0x2001_0db8 << 96, 32), // documentation
    (0x3fff_0000 << 96, 20), // documentation (RFC 9637)
];

fn in_v6(bits: u128, net: u128, len: u8) -> bool {
    let mask = u128::MAX << (128 - u32::from(len));
    bits & mask == net & mask
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let bits = u128::from(ip);
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated; includes :: and ::1).
    if bits >> 32 == 0xffff || bits >> 32 == 0 {
        return bits >> 32 == 0xffff && is_public_v4(low_v4(bits));
    }
    // NAT64 (64:ff9b::/96): the gateway connects to the embedded IPv4 address.
    if in_v6(bits, 0x0064_ff9b << 96, 96) {
        return is_public_v4(low_v4(bits));
    }
    // 6to4 (2002::/16): the IPv4 address is bits 16..48.
    if in_v6(bits, 0x2002 << 112, 16) {
        let v4 = ((bits >> 80) & 0xffff_ffff) as u32;
        return is_public_v4(Ipv4Addr::from(v4));
    }
    // Global unicast only: this leaves out unique-local fc00::/7 (fd00:ec2::254, AWS's
    // metadata), link-local fe80::/10, site-local fec0::/10, multicast ff00::/8, the
    // local-use NAT64 64:ff9b:1::/48 and discard-only 100::/64.
    in_v6(bits, 0x2 << 124, 3) && !V6_BLOCKED.iter().any(|(net, len)| in_v6(bits, *net, *len))
}

fn low_v4(bits: u128) -> Ipv4Addr {
    Ipv4Addr::from((bits & 0xffff_ffff) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public(s.parse().expect("an address"))
    }

    #[test]
    fn v4() {
        for ok in [
            "93.184.215.14",
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "223.255.255.254",
        ] {
            assert!(public(ok), "{ok} is public");
        }
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.100.100.200",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "169.254.170.2",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.192",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!public(bad), "{bad} is refused");
        }
    }

    #[test]
    fn v6() {
        for ok in [
            "2606:4700:4700::1111",
            "2a00:1450:4001:82b::200e",
            "2001:4860:4860::8888",
        ] {
            assert!(public(ok), "{ok} is public");
        }
        for bad in [
            "::",
            "::1",
            "fe80::1",
            "fec0::1",
            "fc00::1",
            "fd00:ec2::254",
            "fd12:3456::1",
            "ff02::1",
            "ff05::2",
            "2001:db8::1",
            "2001::1",
            "3fff::1",
            "100::1",
            "64:ff9b:1::1",
            "::2",
        ] {
            assert!(!public(bad), "{bad} is refused");
        }
    }

    #[test]
    fn v4_inside_v6_is_judged_as_v4() {
        // Mapped.
        assert!(!public("::ffff:127.0.0.1"));
        assert!(!public("::ffff:169.254.169.254"));
        assert!(!public("::ffff:10.1.2.3"));
        assert!(public("::ffff:93.184.215.14"));
        // Compatible (deprecated): never.
        assert!(!public("::127.0.0.1"));
        assert!(!public("::93.184.215.14"));
        // NAT64.
        assert!(!public("64:ff9b::7f00:1"));
        assert!(!public("64:ff9b::a9fe:a9fe"));
        assert!(public("64:ff9b::5db8:d70e"));
        // 6to4.
        assert!(!public("2002:7f00:1::1"));
        assert!(!public("2002:a9fe:a9fe::1"));
        assert!(public("2002:5db8:d70e::1"));
    }
}
