//! The client's address behind proxies: the connection's peer, unless it is a trusted proxy,
//! in which case the `x-forwarded-for` entry it added says who came before it, and so on.

use std::net::IpAddr;

use ipnet::IpNet;

/// Who called: walking the hops from the connection's peer leftwards through
/// `x-forwarded-for` (each proxy appends the address it saw), the first address not in
/// `trusted`. Entries a client wrote itself sit left of every trusted proxy's, so they count
/// only when every proxy after them is trusted. `None` when not even the peer is known.
pub fn client_address(
    peer: Option<&str>,
    forwarded_for: Option<&str>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer: Option<IpAddr> = peer.and_then(|p| p.trim().parse().ok());
    let mut chain: Vec<&str> = forwarded_for
        .map(|h| h.split(',').map(str::trim).collect())
        .unwrap_or_default();
    // The peer is the last hop (a proxy in front of this one may have appended it already).
    if peer.is_some() && chain.last().and_then(|l| l.parse::<IpAddr>().ok()) != peer {
        chain.push("");
    }
    let mut client = peer;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    // Skip the peer itself (already `client`), then walk left while the hop is trusted.
    for entry in chain.iter().rev().skip(1) {
        let Some(current) = client else { break };
        if !is_trusted(&current) {
            break;
        }
        match entry.parse::<IpAddr>() {
            Ok(ip) => client = Some(ip),
            // Garbage left of a trusted proxy: the proxy's view is the last we can believe.
            Err(_) => break,
        }
    }
    client
}

/// Parses a comma-separated list of networks (`10.0.0.0/8`, `::1/128`, or a bare address).
///
/// # Errors
/// The first entry that is not a network or an address, quoted.
pub fn parse_networks(list: &str) -> Result<Vec<IpNet>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{s:?} is not a network (10.0.0.0/8) or an address"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &str) -> Vec<IpNet> {
        parse_networks(list).unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client_whatever_the_header_says() {
        assert_eq!(
            client_address(Some("10.0.0.5"), Some("203.0.113.7, 10.0.0.5"), &[]),
            ip("10.0.0.5")
        );
        assert_eq!(client_address(Some("10.0.0.5"), None, &[]), ip("10.0.0.5"));
    }

    #[test]
    fn behind_a_trusted_load_balancer_the_address_it_saw_is_the_client() {
        let lb = nets("10.0.0.0/24");
        assert_eq!(
            client_address(Some("10.0.0.5"), Some("203.0.113.7, 10.0.0.5"), &lb),
            ip("203.0.113.7")
        );
        // A client cannot push its own guess past the load balancer's entry.
        assert_eq!(
            client_address(
                Some("10.0.0.5"),
                Some("198.51.100.1, 203.0.113.7, 10.0.0.5"),
                &lb
            ),
            ip("203.0.113.7")
        );
        // Two trusted hops.
        assert_eq!(
            client_address(
                Some("10.0.0.5"),
                Some("203.0.113.7, 10.0.0.9, 10.0.0.5"),
                &lb
            ),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn only_a_trusted_peer_is_asked_who_came_before_it() {
        let lb = nets("10.0.0.0/24");
        assert_eq!(
            client_address(Some("192.0.2.1"), Some("203.0.113.7, 10.0.0.5"), &lb),
            ip("192.0.2.1"),
            "an untrusted peer's header is the client's own say"
        );
        assert_eq!(
            client_address(Some("10.0.0.5"), Some("203.0.113.7"), &lb),
            ip("203.0.113.7"),
            "a trusted balancer that did not append its own peer"
        );
        assert_eq!(
            client_address(Some("10.0.0.5"), Some("garbage, 10.0.0.5"), &lb),
            ip("10.0.0.5")
        );
        assert_eq!(
            client_address(Some("10.0.0.5"), Some("garbage"), &lb),
            ip("10.0.0.5"),
            "garbage is never a client"
        );
    }

    #[test]
    fn networks_parse_as_cidrs_or_addresses_and_a_bad_one_is_quoted() {
        assert_eq!(nets("10.0.0.0/8, ::1, 127.0.0.1").len(), 3);
        assert!(nets("").is_empty());
        assert!(
            parse_networks("10.0.0.0/8, lb.example")
                .unwrap_err()
                .contains("\"lb.example\"")
        );
    }
}
