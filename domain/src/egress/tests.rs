use super::*;
use AddressCategory::*;

fn strict() -> EgressPolicy {
    EgressPolicy::default()
}

fn category(ip: &str) -> Option<AddressCategory> {
    let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"));
    strict().check(ip).err().map(|r| r.category())
}

/// Every IPv4 range: its first and last address, and the public neighbours just outside it.
#[test]
fn ipv4_ranges_are_refused_edge_to_edge() {
    let cases: &[(&str, Option<AddressCategory>)] = &[
        ("0.0.0.0", Some(Unspecified)),
        ("0.255.255.255", Some(Unspecified)),
        ("1.0.0.0", None),
        ("9.255.255.255", None),
        ("10.0.0.0", Some(Private)),
        ("10.1.2.3", Some(Private)),
        ("10.255.255.255", Some(Private)),
        ("11.0.0.0", None),
        ("100.63.255.255", None),
        ("100.64.0.0", Some(SharedAddressSpace)),
        ("100.127.255.255", Some(SharedAddressSpace)),
        ("100.128.0.0", None),
        ("126.255.255.255", None),
        ("127.0.0.0", Some(Loopback)),
        ("127.0.0.1", Some(Loopback)),
        ("127.0.0.2", Some(Loopback)),
        ("127.255.255.255", Some(Loopback)),
        ("128.0.0.0", None),
        ("169.253.255.255", None),
        ("169.254.0.0", Some(LinkLocal)),
        ("169.254.169.254", Some(LinkLocal)),
        ("169.254.255.255", Some(LinkLocal)),
        ("169.255.0.0", None),
        ("172.15.255.255", None),
        ("172.16.0.0", Some(Private)),
        ("172.31.255.255", Some(Private)),
        ("172.32.0.0", None),
        ("191.255.255.255", None),
        ("192.0.0.0", Some(Reserved)),
        ("192.0.0.255", Some(Reserved)),
        ("192.0.1.0", None),
        ("192.0.2.0", Some(Documentation)),
        ("192.0.2.255", Some(Documentation)),
        ("192.0.3.0", None),
        ("192.88.98.255", None),
        ("192.88.99.0", Some(Reserved)),
        ("192.88.99.255", Some(Reserved)),
        ("192.88.100.0", None),
        ("192.167.255.255", None),
        ("192.168.0.0", Some(Private)),
        ("192.168.255.255", Some(Private)),
        ("192.169.0.0", None),
        ("198.17.255.255", None),
        ("198.18.0.0", Some(Reserved)),
        ("198.19.255.255", Some(Reserved)),
        ("198.20.0.0", None),
        ("198.51.99.255", None),
        ("198.51.100.0", Some(Documentation)),
        ("198.51.100.255", Some(Documentation)),
        ("198.51.101.0", None),
        ("203.0.112.255", None),
        ("203.0.113.0", Some(Documentation)),
        ("203.0.113.255", Some(Documentation)),
        ("203.0.114.0", None),
        ("223.255.255.255", None),
        ("224.0.0.0", Some(Multicast)),
        ("239.255.255.255", Some(Multicast)),
        ("240.0.0.0", Some(Reserved)),
        ("255.255.255.254", Some(Reserved)),
        ("255.255.255.255", Some(Reserved)),
        ("8.8.8.8", None),
        ("93.184.216.34", None),
    ];
    for &(ip, expected) in cases {
        assert_eq!(category(ip), expected, "{ip}");
    }
}

/// An independent oracle for IPv4, from std's stable predicates plus the ranges std has no
/// stable predicate for, checked on both edges of every /16 and /24 boundary of the space, as
/// is and in each IPv6 form that carries an IPv4 address.
#[test]
fn ipv4_agrees_with_an_independent_oracle_across_the_space() {
    fn oracle(ip: Ipv4Addr) -> bool {
        let [a, b, c, _] = ip.octets();
        ip.is_loopback()
            || ip.is_private()
            || ip.is_link_local()
            || ip.is_multicast()
            || ip.is_broadcast()
            || ip.is_documentation()
            || a == 0
            || (a == 100 && (64..128).contains(&b))
            || a >= 240
            || (a, b, c) == (192, 0, 0)
            || (a, b, c) == (192, 88, 99)
            || (a == 198 && (b == 18 || b == 19))
    }
    let policy = strict();
    for hi in 0..=u16::MAX {
        for mid in [0u32, 0xff] {
            for lo in [0u32, 0xff] {
                let ip = Ipv4Addr::from((u32::from(hi) << 16) | (mid << 8) | lo);
                assert_eq!(policy.check(IpAddr::V4(ip)).is_err(), oracle(ip), "{ip}");
                // Every IPv6 form that carries it is judged exactly like the address itself.
                let v4 = u128::from(u32::from(ip));
                for carrier in [
                    ip.to_ipv6_mapped(),
                    ip.to_ipv6_compatible(),
                    Ipv6Addr::from((0x64_ff9b_u128 << 96) | v4),
                    Ipv6Addr::from((0x2002_u128 << 112) | (v4 << 80) | 0xbeef),
                ] {
                    assert_eq!(
                        policy.check(IpAddr::V6(carrier)).is_err(),
                        oracle(ip),
                        "{carrier}"
                    );
                }
            }
        }
    }
}

#[test]
fn ipv6_ranges_are_refused_edge_to_edge() {
    let cases: &[(&str, Option<AddressCategory>)] = &[
        ("::", Some(Unspecified)),
        ("::1", Some(Loopback)),
        ("fe80::", Some(LinkLocal)),
        ("fe80::1%1", None), // not an address: skipped below
        ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(LinkLocal)),
        ("fec0::1", Some(Private)),
        ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Private)),
        ("fc00::", Some(Private)),
        ("fd12:3456:789a::1", Some(Private)),
        ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Private)),
        ("ff00::", Some(Multicast)),
        ("ff02::1", Some(Multicast)),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Multicast)),
        ("2001:db8::", Some(Documentation)),
        (
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
            Some(Documentation),
        ),
        ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", None),
        ("2001:db9::", None),
        ("3fff::", Some(Documentation)),
        (
            "3fff:0fff:ffff:ffff:ffff:ffff:ffff:ffff",
            Some(Documentation),
        ),
        ("3fff:1000::", None),
        ("2001::", Some(Teredo)),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Some(Teredo)),
        ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", Some(Teredo)),
        ("2001:1::1", None),
        ("2001:2::", Some(Reserved)),
        ("2001:2:0:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
        ("2001:2:1::", None),
        ("2001:10::1", Some(Reserved)),
        ("2001:2f:ffff::", Some(Reserved)),
        ("2001:30::", None),
        ("5f00::1", Some(Reserved)),
        ("100::", Some(Reserved)),
        ("100::ffff:ffff:ffff:ffff", Some(Reserved)),
        ("4000::", Some(Reserved)),
        ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
        ("::ffff:0:0:1", Some(Reserved)), // IPv4-translated (SIIT), outside 2000::/3
        ("64:ff9b:1::", Some(LocalNat64)),
        ("64:ff9b:1::808:808", Some(LocalNat64)),
        ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", Some(LocalNat64)),
        ("64:ff9b:2::808:808", Some(Reserved)),
        ("2000::", None),
        ("2606:4700:4700::1111", None),
        ("2a00:1450:4001:82b::200e", None),
        ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
    ];
    for &(ip, expected) in cases {
        if ip.contains('%') {
            assert!(
                ip.parse::<IpAddr>().is_err(),
                "scoped addresses do not parse"
            );
            continue;
        }
        assert_eq!(category(ip), expected, "{ip}");
    }
}

#[test]
fn ipv6_forms_that_carry_ipv4_are_judged_by_the_ipv4_address() {
    /// The address, and the category, embedding and IPv4 address of its refusal.
    type Case<'a> = (&'a str, Option<(AddressCategory, Embedding, &'a str)>);
    let cases: &[Case] = &[
        (
            "::ffff:127.0.0.1",
            Some((Loopback, Embedding::Ipv4Mapped, "127.0.0.1")),
        ),
        (
            "::ffff:169.254.169.254",
            Some((LinkLocal, Embedding::Ipv4Mapped, "169.254.169.254")),
        ),
        (
            "::ffff:0.0.0.0",
            Some((Unspecified, Embedding::Ipv4Mapped, "0.0.0.0")),
        ),
        ("::ffff:8.8.8.8", None),
        (
            "::127.0.0.1",
            Some((Loopback, Embedding::Ipv4Compatible, "127.0.0.1")),
        ),
        (
            "::2",
            Some((Unspecified, Embedding::Ipv4Compatible, "0.0.0.2")),
        ),
        (
            "::10.0.0.1",
            Some((Private, Embedding::Ipv4Compatible, "10.0.0.1")),
        ),
        ("::8.8.8.8", None),
        (
            "64:ff9b::127.0.0.1",
            Some((Loopback, Embedding::Nat64, "127.0.0.1")),
        ),
        (
            "64:ff9b::a9fe:a9fe",
            Some((LinkLocal, Embedding::Nat64, "169.254.169.254")),
        ),
        (
            "64:ff9b::192.168.1.1",
            Some((Private, Embedding::Nat64, "192.168.1.1")),
        ),
        ("64:ff9b::8.8.8.8", None),
        (
            "2002:7f00:1::",
            Some((Loopback, Embedding::SixToFour, "127.0.0.1")),
        ),
        (
            "2002:a00:1:ffff::1",
            Some((Private, Embedding::SixToFour, "10.0.0.1")),
        ),
        (
            "2002:a9fe:a9fe::1",
            Some((LinkLocal, Embedding::SixToFour, "169.254.169.254")),
        ),
        ("2002:808:808::1", None),
    ];
    for &(ip, expected) in cases {
        let addr: IpAddr = ip.parse().unwrap();
        let got = strict()
            .check(addr)
            .err()
            .map(|r| (r.category(), r.embedded()));
        let expected = expected.map(|(c, how, v4)| (c, Some((how, v4.parse().unwrap()))));
        assert_eq!(got, expected, "{ip}");
    }
}

#[test]
fn refusals_say_what_the_address_is_and_how_to_allow_it() {
    let refusal = |ip: &str| strict().check(ip.parse().unwrap()).unwrap_err().to_string();
    assert_eq!(
        refusal("127.0.0.1"),
        "127.0.0.1 is loopback; allowlist it with CHAMBERLAIN_EGRESS_ALLOW to reach it"
    );
    assert_eq!(
        refusal("169.254.169.254"),
        "169.254.169.254 is link-local (where cloud metadata services answer); allowlist it \
         with CHAMBERLAIN_EGRESS_ALLOW to reach it"
    );
    assert_eq!(
        refusal("::ffff:10.1.2.3"),
        "::ffff:10.1.2.3 carries 10.1.2.3 (IPv4-mapped), which is private; allowlist 10.1.2.3 \
         with CHAMBERLAIN_EGRESS_ALLOW to reach it"
    );
    assert!(refusal("2001::1").contains("is a Teredo tunnel address"));
    assert!(refusal("100.64.0.1").contains("is shared address space"));
    assert!(refusal("203.0.113.9").contains("is reserved for documentation"));
    assert!(refusal("224.0.0.1").contains("is multicast"));
    assert!(refusal("0.0.0.0").contains("is unspecified"));
    assert!(refusal("240.0.0.1").contains("is reserved"));
}

#[test]
fn the_allowlist_lifts_refusals_for_what_it_contains_and_nothing_else() {
    let policy = EgressPolicy::parse("127.0.0.2/32, 10.20.0.0/16,fd00::/8,").unwrap();
    let ok = |ip: &str| policy.check(ip.parse().unwrap()).is_ok();
    assert!(ok("127.0.0.2"));
    assert!(!ok("127.0.0.1"));
    assert!(!ok("127.0.0.3"));
    assert!(ok("10.20.0.0") && ok("10.20.255.255"));
    assert!(!ok("10.21.0.0") && !ok("10.19.255.255"));
    assert!(ok("fd00::1") && ok("fdff::1"));
    assert!(!ok("fc00::1"));
    // The IPv4 address an IPv6 form carries is allowlisted through its IPv4 network...
    assert!(ok("::ffff:127.0.0.2"));
    assert!(ok("64:ff9b::10.20.3.4"));
    assert!(ok("2002:a14:304::1"));
    assert!(!ok("::ffff:127.0.0.1"));
    // ... and public addresses never need the allowlist.
    assert!(ok("8.8.8.8") && ok("2606:4700:4700::1111"));

    // An IPv6 network on the list covers its own addresses even where they carry IPv4.
    let v6 = EgressPolicy::parse("::ffff:127.0.0.0/104,2001::/32,64:ff9b:1::/48").unwrap();
    assert!(v6.check("::ffff:127.0.0.1".parse().unwrap()).is_ok());
    assert!(v6.check("127.0.0.1".parse().unwrap()).is_err());
    assert!(v6.check("2001::1".parse().unwrap()).is_ok());
    assert!(v6.check("64:ff9b:1::a00:1".parse().unwrap()).is_ok());

    // Everything allowlisted: an operator's explicit choice.
    let open = EgressPolicy::parse("0.0.0.0/0,::/0").unwrap();
    for ip in ["127.0.0.1", "169.254.169.254", "::1", "2001::1", "ff02::1"] {
        assert!(open.check(ip.parse().unwrap()).is_ok(), "{ip}");
    }
}

#[test]
fn allowlists_parse_cidrs_and_bare_addresses_and_name_the_bad_item() {
    let policy = EgressPolicy::parse(" 10.20.0.1/16 ,127.0.0.2,::1, 10.20.0.0/16").unwrap();
    let shown: Vec<String> = policy.allowlist().iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["10.20.0.0/16", "127.0.0.2/32", "::1/128"]);
    assert!(EgressPolicy::parse("").unwrap().allowlist().is_empty());
    assert!(EgressPolicy::parse(" , ").unwrap().allowlist().is_empty());
    for bad in [
        "10.20.0.0/33",
        "10.20.0.0/16,nonsense",
        "localhost",
        "10.0.0.0/-1",
        "fd00::/129",
        "10.0.0.0/8;192.168.0.0/16",
    ] {
        let err = EgressPolicy::parse(bad).unwrap_err();
        assert_eq!(err.field, "egress_allow", "{bad}");
        assert!(matches!(err.rule, Rule::Format(_)), "{bad}");
    }
    assert_eq!(
        EgressPolicy::parse("10.0.0.0/8,10.0.0.0/33")
            .unwrap_err()
            .to_string(),
        "egress_allow: \"10.0.0.0/33\" is not a CIDR such as 10.20.0.0/16 or fd00::/8"
    );
}
