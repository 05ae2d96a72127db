//! Where a request comes from (SPEC §18), for the budgets kept per client address and
//! the sign-in throttle.
//!
//! Behind a balancer every connection's peer is the balancer, so the client's address
//! is what the balancer wrote into `X-Forwarded-For`. Anyone can write that header,
//! though, so it is believed only from peers in `TRUSTED_PROXIES`, and only as far as
//! the chain of trusted hops goes: read from the right (each proxy appends the address
//! it saw), the first address that is not a trusted proxy is the client. An entry that
//! is not an address ends the walk at the last hop that could be trusted.
//!
//! Budgets count a [`ClientNetwork`], not an address: an IPv6 client is given a whole
//! /64 by its provider, so counting single IPv6 addresses would give it 2^64 budgets.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use ipnet::IpNet;

/// The address a request came from, as far as the node can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddress(IpAddr);

/// What budgets count per: an IPv4 address, or the /64 an IPv6 address is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientNetwork {
    V4(Ipv4Addr),
    V6(u64),
}

impl ClientAddress {
    /// `ip`, with an IPv4 address written the IPv6 way (`::ffff:192.0.2.7`, how a dual
    /// stack socket reports IPv4 peers) taken as the IPv4 address it is.
    pub fn new(ip: IpAddr) -> Self {
        Self(ip.to_canonical())
    }

    /// The client behind a connection from `peer` that carried these `X-Forwarded-For`
    /// header values (in the order received), believing only `trusted` proxies.
    pub fn resolve<'a>(
        peer: IpAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
        trusted: &[IpNet],
    ) -> Self {
        let is_trusted = |ip: IpAddr| trusted.iter().any(|network| network.contains(&ip));
        let mut client = Self::new(peer);
        if !is_trusted(client.0) {
            return client;
        }
        let hops = forwarded_for.rev().flat_map(|value| value.rsplit(','));
        for hop in hops {
            let Some(hop) = parse_hop(hop.trim()) else {
                break;
            };
            client = Self::new(hop);
            if !is_trusted(client.0) {
                break;
            }
        }
        client
    }

    pub fn ip(&self) -> IpAddr {
        self.0
    }

    /// The network this address counts against.
    pub fn network(&self) -> ClientNetwork {
        match self.0 {
            IpAddr::V4(ip) => ClientNetwork::V4(ip),
            IpAddr::V6(ip) => ClientNetwork::V6((ip.to_bits() >> 64) as u64),
        }
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`192.0.2.7:5000`,
/// `[2001:db8::7]:5000`) as some proxies write it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|addr| addr.ip()))
        .ok()
}

impl fmt::Display for ClientAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for ClientNetwork {
    /// `192.0.2.7` or `2001:db8:1:2::/64`: the key the sign-in throttle stores.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientNetwork::V4(ip) => ip.fmt(f),
            ClientNetwork::V6(prefix) => {
                write!(f, "{}/64", Ipv6Addr::from_bits(u128::from(*prefix) << 64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(raw: &str) -> IpAddr {
        raw.parse().unwrap()
    }

    fn trusted(raw: &[&str]) -> Vec<IpNet> {
        raw.iter().map(|network| network.parse().unwrap()).collect()
    }

    fn resolve(peer: &str, headers: &[&str], proxies: &[&str]) -> IpAddr {
        ClientAddress::resolve(ip(peer), headers.iter().copied(), &trusted(proxies)).ip()
    }

    #[test]
    fn the_header_is_ignored_from_a_peer_that_is_not_a_trusted_proxy() {
        assert_eq!(
            resolve("203.0.113.9", &["198.51.100.1"], &[]),
            ip("203.0.113.9")
        );
        assert_eq!(
            resolve("203.0.113.9", &["198.51.100.1"], &["10.0.0.0/8"]),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn the_rightmost_address_that_is_not_a_trusted_proxy_is_the_client() {
        let proxies = ["10.0.0.0/8"];
        // The client wrote a header of its own; the balancer appended what it saw.
        assert_eq!(
            resolve("10.0.0.2", &["1.2.3.4, 198.51.100.7"], &proxies),
            ip("198.51.100.7")
        );
        // Two proxies in a row, over two header lines.
        assert_eq!(
            resolve("10.0.0.2", &["1.2.3.4, 198.51.100.7", "10.0.0.9"], &proxies),
            ip("198.51.100.7")
        );
        // A chain of trusted hops only: the farthest one is all that is known.
        assert_eq!(resolve("10.0.0.2", &["10.0.0.3"], &proxies), ip("10.0.0.3"));
        // No header from a trusted peer: the peer itself (its own health checks).
        assert_eq!(resolve("10.0.0.2", &[], &proxies), ip("10.0.0.2"));
    }

    #[test]
    fn an_entry_that_is_not_an_address_ends_the_walk_at_the_last_trusted_hop() {
        let proxies = ["10.0.0.0/8"];
        assert_eq!(
            resolve("10.0.0.2", &["198.51.100.7, unknown"], &proxies),
            ip("10.0.0.2")
        );
        assert_eq!(
            resolve("10.0.0.2", &["198.51.100.7, 10.0.0.5, "], &proxies),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn ports_and_ipv4_written_as_ipv6_are_understood() {
        let proxies = ["10.0.0.0/8", "fd00::/8"];
        assert_eq!(
            resolve("::ffff:10.0.0.2", &["198.51.100.7:5123"], &proxies),
            ip("198.51.100.7")
        );
        assert_eq!(
            resolve("fd00::1", &["[2001:db8::7]:443"], &proxies),
            ip("2001:db8::7")
        );
        assert_eq!(
            resolve("10.0.0.2", &["::ffff:1.2.3.4"], &proxies),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_client() {
        let network = |raw: &str| ClientAddress::new(ip(raw)).network();
        assert_eq!(network("2001:db8:1:2::1"), network("2001:db8:1:2:ffff::9"));
        assert_ne!(network("2001:db8:1:2::1"), network("2001:db8:1:3::1"));
        assert_ne!(network("192.0.2.1"), network("192.0.2.2"));
        assert_eq!(network("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(network("::ffff:192.0.2.1").to_string(), "192.0.2.1");
    }
}
