//! The egress guard: which addresses the chamber client may connect to.
//!
//! Chamber URLs are typed by users, so a worker must not become a way into the networks it
//! sits in. [`EgressPolicy::check`] refuses every address that is not public unicast —
//! loopback, unspecified, link-local (where cloud metadata services answer), private, shared
//! (carrier-grade NAT), multicast, reserved and documentation ranges — unless a CIDR of the
//! operator's allowlist contains it. IPv6 forms that carry an IPv4 address (IPv4-mapped,
//! IPv4-compatible, well-known NAT64, 6to4) are judged by the IPv4 address they carry; Teredo
//! and local-use NAT64 addresses are refused. Pure: no I/O, no clock.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{Rule, ValidationError};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The setting that lifts a refusal, named in every refusal.
pub const ALLOWLIST_SETTING: &str = "CHAMBERLAIN_EGRESS_ALLOW";

/// Why an address is not public, and so refused unless allowlisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AddressCategory {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 0.0.0.0/8 ("this network"), ::.
    Unspecified,
    /// 169.254.0.0/16 (cloud metadata services answer at 169.254.169.254), fe80::/10.
    LinkLocal,
    /// 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7 (unique local), fec0::/10
    /// (deprecated site-local).
    Private,
    /// 100.64.0.0/10, carrier-grade NAT.
    SharedAddressSpace,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 240.0.0.0/4 (with the broadcast address), 192.0.0.0/24, 192.88.99.0/24, 198.18.0.0/15
    /// (benchmarking); in IPv6 everything outside global unicast 2000::/3 not named elsewhere,
    /// benchmarking 2001:2::/48, ORCHID 2001:10::/28 and 2001:20::/28, SRv6 5f00::/16.
    Reserved,
    /// 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// 2001::/32: a tunnel whose endpoint cannot be judged.
    Teredo,
    /// 64:ff9b:1::/48, the local-use NAT64 prefix (RFC 8215): where the IPv4 address sits
    /// depends on the prefix length the translator uses (/48 to /96), which cannot be known
    /// here, and a crafted address reads as a different IPv4 address at each length.
    LocalNat64,
}

impl AddressCategory {
    /// How a refusal names the category: "127.0.0.1 is loopback".
    pub const fn describe(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Unspecified => "unspecified",
            Self::LinkLocal => "link-local (where cloud metadata services answer)",
            Self::Private => "private",
            Self::SharedAddressSpace => "shared address space (carrier-grade NAT)",
            Self::Multicast => "multicast",
            Self::Reserved => "reserved",
            Self::Documentation => "reserved for documentation",
            Self::Teredo => "a Teredo tunnel address",
            Self::LocalNat64 => "a local-use NAT64 address (its IPv4 destination is ambiguous)",
        }
    }
}

impl fmt::Display for AddressCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// How an IPv6 address carries an IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Embedding {
    /// ::ffff:0:0/96.
    Ipv4Mapped,
    /// ::/96 (deprecated).
    Ipv4Compatible,
    /// 64:ff9b::/96, the well-known NAT64 prefix.
    Nat64,
    /// 2002::/16, the IPv4 address in bits 16 to 48.
    SixToFour,
}

impl Embedding {
    pub const fn describe(self) -> &'static str {
        match self {
            Self::Ipv4Mapped => "IPv4-mapped",
            Self::Ipv4Compatible => "IPv4-compatible",
            Self::Nat64 => "NAT64",
            Self::SixToFour => "6to4",
        }
    }
}

/// Why [`EgressPolicy::check`] refused an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRefusal {
    address: IpAddr,
    category: AddressCategory,
    embedded: Option<(Embedding, Ipv4Addr)>,
}

impl EgressRefusal {
    /// The address that was refused.
    pub fn address(&self) -> IpAddr {
        self.address
    }

    /// The category of the address judged (the embedded IPv4 address's, if there is one).
    pub fn category(&self) -> AddressCategory {
        self.category
    }

    /// The IPv4 address an IPv6 address was judged by, and how it was embedded.
    pub fn embedded(&self) -> Option<(Embedding, Ipv4Addr)> {
        self.embedded
    }
}

impl fmt::Display for EgressRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.embedded {
            None => write!(
                f,
                "{} is {}; allowlist it with {ALLOWLIST_SETTING} to reach it",
                self.address, self.category
            ),
            Some((how, v4)) => write!(
                f,
                "{} carries {v4} ({}), which is {}; allowlist {v4} with {ALLOWLIST_SETTING} to \
                 reach it",
                self.address,
                how.describe(),
                self.category
            ),
        }
    }
}

impl std::error::Error for EgressRefusal {}

/// The operator's allowlist, and the rule that refuses every non-public address outside it.
///
/// The default policy allowlists nothing: only public addresses pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allow: Vec<IpNet>,
}

impl EgressPolicy {
    /// A policy that lets through whatever the given networks contain, besides public
    /// addresses.
    pub fn new(allow: impl IntoIterator<Item = IpNet>) -> Self {
        let mut allow: Vec<IpNet> = allow.into_iter().map(|n| n.trunc()).collect();
        allow.sort_unstable();
        allow.dedup();
        Self { allow }
    }

    /// Parses a comma-separated list of CIDRs such as `127.0.0.2/32,10.20.0.0/16,fd00::/8`. A
    /// bare address is a single-address network; host bits below the prefix are dropped
    /// (`10.20.0.1/16` is `10.20.0.0/16`); spaces and empty items are ignored.
    ///
    /// # Errors
    /// `egress_allow`: [`Rule::Format`] naming the item that is not a CIDR.
    pub fn parse(list: &str) -> Result<Self, ValidationError> {
        let mut allow = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    ValidationError::new(
                        "egress_allow",
                        Rule::Format(format!(
                            "{item:?} is not a CIDR such as 10.20.0.0/16 or fd00::/8"
                        )),
                    )
                })?;
            allow.push(net);
        }
        Ok(Self::new(allow))
    }

    /// The allowlisted networks, normalized and sorted.
    pub fn allowlist(&self) -> &[IpNet] {
        &self.allow
    }

    fn allows(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|net| net.contains(&ip))
    }

    /// Whether the client may connect to `ip`.
    ///
    /// # Errors
    /// [`EgressRefusal`] when the address is not public unicast and no allowlisted network
    /// contains it (nor, for an IPv6 address carrying an IPv4 address, the IPv4 address).
    pub fn check(&self, ip: IpAddr) -> Result<(), EgressRefusal> {
        if self.allows(ip) {
            return Ok(());
        }
        let refuse = |category, embedded| EgressRefusal {
            address: ip,
            category,
            embedded,
        };
        match ip {
            IpAddr::V4(v4) => match ipv4_category(v4) {
                Some(category) => Err(refuse(category, None)),
                None => Ok(()),
            },
            IpAddr::V6(v6) => match ipv6_judgement(v6) {
                V6Judgement::Public => Ok(()),
                V6Judgement::Special(category) => Err(refuse(category, None)),
                V6Judgement::Carries(how, v4) => {
                    if self.allows(IpAddr::V4(v4)) {
                        return Ok(());
                    }
                    match ipv4_category(v4) {
                        Some(category) => Err(refuse(category, Some((how, v4)))),
                        None => Ok(()),
                    }
                }
            },
        }
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

/// Every IPv4 range that is not public unicast (RFC 6890 and its updates).
const IPV4_SPECIAL: &[(Ipv4Net, AddressCategory)] = {
    use AddressCategory::*;
    &[
        (v4(0, 0, 0, 0, 8), Unspecified),
        (v4(10, 0, 0, 0, 8), Private),
        (v4(100, 64, 0, 0, 10), SharedAddressSpace),
        (v4(127, 0, 0, 0, 8), Loopback),
        (v4(169, 254, 0, 0, 16), LinkLocal),
        (v4(172, 16, 0, 0, 12), Private),
        (v4(192, 0, 0, 0, 24), Reserved),
        (v4(192, 0, 2, 0, 24), Documentation),
        (v4(192, 88, 99, 0, 24), Reserved),
        (v4(192, 168, 0, 0, 16), Private),
        (v4(198, 18, 0, 0, 15), Reserved),
        (v4(198, 51, 100, 0, 24), Documentation),
        (v4(203, 0, 113, 0, 24), Documentation),
        (v4(224, 0, 0, 0, 4), Multicast),
        (v4(240, 0, 0, 0, 4), Reserved),
    ]
};

/// The category of a non-public IPv4 address; `None` for public unicast.
pub fn ipv4_category(ip: Ipv4Addr) -> Option<AddressCategory> {
    IPV4_SPECIAL
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|&(_, category)| category)
}

const fn v6(segments: [u16; 8], len: u8) -> Ipv6Net {
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), len)
}

const IPV4_MAPPED: Ipv6Net = v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96);
const IPV4_COMPATIBLE: Ipv6Net = v6([0; 8], 96);
const NAT64: Ipv6Net = v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
const NAT64_LOCAL: Ipv6Net = v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48);
const SIX_TO_FOUR: Ipv6Net = v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);
const TEREDO: Ipv6Net = v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32);
const GLOBAL_UNICAST: Ipv6Net = v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3);

/// IPv6 ranges that carry no IPv4 address and are not public unicast. Checked in order, before
/// the rule that everything outside 2000::/3 is reserved.
const IPV6_SPECIAL: &[(Ipv6Net, AddressCategory)] = {
    use AddressCategory::*;
    &[
        (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), LinkLocal),
        (v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), Private),
        (v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), Private),
        (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), Multicast),
        (v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), Documentation),
        (v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), Documentation),
        (v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48), Reserved),
        (v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28), Reserved),
        (v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28), Reserved),
        (v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16), Reserved),
    ]
};

enum V6Judgement {
    Public,
    Special(AddressCategory),
    /// Judged by the IPv4 address it carries.
    Carries(Embedding, Ipv4Addr),
}

/// `bits` bits of `x` starting `from` bits below the most significant one.
fn bits(x: u128, from: u32, len: u32) -> u32 {
    ((x >> (128 - from - len)) & ((1u128 << len) - 1)) as u32
}

fn ipv6_judgement(ip: Ipv6Addr) -> V6Judgement {
    let x = u128::from(ip);
    if ip.is_unspecified() {
        return V6Judgement::Special(AddressCategory::Unspecified);
    }
    if ip.is_loopback() {
        return V6Judgement::Special(AddressCategory::Loopback);
    }
    if IPV4_MAPPED.contains(&ip) {
        return V6Judgement::Carries(Embedding::Ipv4Mapped, Ipv4Addr::from(bits(x, 96, 32)));
    }
    if IPV4_COMPATIBLE.contains(&ip) {
        return V6Judgement::Carries(Embedding::Ipv4Compatible, Ipv4Addr::from(bits(x, 96, 32)));
    }
    if NAT64.contains(&ip) {
        return V6Judgement::Carries(Embedding::Nat64, Ipv4Addr::from(bits(x, 96, 32)));
    }
    if NAT64_LOCAL.contains(&ip) {
        return V6Judgement::Special(AddressCategory::LocalNat64);
    }
    if SIX_TO_FOUR.contains(&ip) {
        return V6Judgement::Carries(Embedding::SixToFour, Ipv4Addr::from(bits(x, 16, 32)));
    }
    if TEREDO.contains(&ip) {
        return V6Judgement::Special(AddressCategory::Teredo);
    }
    if let Some(&(_, category)) = IPV6_SPECIAL.iter().find(|(net, _)| net.contains(&ip)) {
        return V6Judgement::Special(category);
    }
    if GLOBAL_UNICAST.contains(&ip) {
        V6Judgement::Public
    } else {
        V6Judgement::Special(AddressCategory::Reserved)
    }
}

#[cfg(test)]
mod tests;
