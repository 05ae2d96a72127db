//! Where webhooks may be sent (SPEC §11): `http`/`https` URLs whose host resolves only to
//! public addresses, unless `WEBHOOK_ALLOW_PRIVATE=true`.
//!
//! The check is made where the connection is: [`PublicOnly`] is the delivery client's
//! resolver, so every attempt resolves the name, refuses it if any address is loopback,
//! private, link-local, multicast or otherwise not public, and connects only to the
//! addresses it checked (a name that changes its answer after the webhook was created
//! gains nothing). Literal addresses never reach a resolver and are checked by
//! [`check_url`], at creation and before each attempt.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::{
    Url,
    dns::{Addrs, Name, Resolve, Resolving},
};

/// Why a destination is refused. Its text is shown to whoever asked for the webhook, so
/// it never tells a name that resolves to a private address from one that does not
/// resolve at all (that would map internal names); the detail goes to the node's log.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotAllowed(pub String);

/// What every refusal of a host or address says.
const HOST_NOT_ALLOWED: &str =
    "the URL's host is not allowed: webhooks go to public addresses only";

fn host_not_allowed() -> NotAllowed {
    NotAllowed(HOST_NOT_ALLOWED.into())
}

/// Whether a webhook may be sent to `ip`: a public unicast address. An IPv6 address that
/// embeds an IPv4 one (mapped, compatible, translated, NAT64, 6to4, Teredo) is judged by
/// the IPv4 address it reaches.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        // Carrier-grade NAT (100.64.0.0/10) and reserved (240.0.0.0/4).
        || (a == 100 && (64..128).contains(&b))
        || a >= 240
        // IETF protocol assignments (192.0.0.0/24), the 6to4 relay anycast
        // (192.88.99.0/24) and benchmarking (198.18.0.0/15).
        || (a, b, c) == (192, 0, 0)
        || (a, b, c) == (192, 88, 99)
        || (a == 198 && (b & 0xfe) == 18))
}

/// The last 32 bits of `ip` as an IPv4 address.
fn low_v4(ip: Ipv6Addr) -> Ipv4Addr {
    let o = ip.octets();
    Ipv4Addr::new(o[12], o[13], o[14], o[15])
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let o = ip.octets();
    match s {
        // ::/96 (IPv4-compatible, with :: and ::1), ::ffff:0:0/96 (IPv4-mapped) and
        // ::ffff:0:0:0/96 (IPv4-translated): the embedded IPv4 address.
        [0, 0, 0, 0, 0, 0, _, _]
        | [0, 0, 0, 0, 0, 0xffff, _, _]
        | [0, 0, 0, 0, 0xffff, 0, _, _] => is_public_v4(low_v4(ip)),
        // NAT64's well-known prefix (64:ff9b::/96): the IPv4 address it translates to.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => is_public_v4(low_v4(ip)),
        // 6to4 (2002::/16): the IPv4 address in bits 16–47.
        [0x2002, ..] => is_public_v4(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        // Teredo (2001::/32): the server's IPv4 address, and the client's, inverted.
        [0x2001, 0, ..] => {
            is_public_v4(Ipv4Addr::new(o[4], o[5], o[6], o[7]))
                && is_public_v4(Ipv4Addr::from(!u32::from(low_v4(ip))))
        }
        // Local-use NAT64 (64:ff9b:1::/48) reaches a local network's IPv4 addresses.
        [0x64, 0xff9b, 1, ..] => false,
        // Documentation (2001:db8::/32, 3fff::/20), benchmarking (2001:2::/48) and
        // ORCHID (2001:10::/28, 2001:20::/28).
        [0x2001, 0xdb8, ..] | [0x2001, 2, 0, ..] => false,
        [0x2001, b, ..] if (b & 0xfff0) == 0x10 || (b & 0xfff0) == 0x20 => false,
        [0x3fff, b, ..] if b < 0x1000 => false,
        // Everything else outside global unicast (2000::/3) is refused: unique local
        // (fc00::/7), link-local (fe80::/10), site-local (fec0::/10), multicast
        // (ff00::/8), discard-only (100::/64) and what is not yet allocated.
        [a, ..] => (a & 0xe000) == 0x2000,
    }
}

/// Parses a webhook URL and checks what can be checked without resolving: the scheme,
/// a host, and a literal address's kind. Returns the URL.
pub fn check_url(url: &str, allow_private: bool) -> Result<Url, NotAllowed> {
    let parsed = Url::parse(url).map_err(|e| NotAllowed(format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(NotAllowed("only http and https URLs are allowed".into()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(NotAllowed("credentials in the URL are not allowed".into()));
    }
    let literal = match parsed.host() {
        None => return Err(NotAllowed("the URL has no host".into())),
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        Some(url::Host::Domain(_)) => None,
    };
    if let Some(ip) = literal
        && !allow_private
        && !is_public(ip)
    {
        return Err(host_not_allowed());
    }
    Ok(parsed)
}

/// Checks a webhook URL as creating one does: [`check_url`], then the host's addresses
/// now (every one must be public).
pub async fn check_destination(url: &str, allow_private: bool) -> Result<Url, NotAllowed> {
    let parsed = check_url(url, allow_private)?;
    if let (Some(url::Host::Domain(host)), false) = (parsed.host(), allow_private) {
        resolve_public(host).await?;
    }
    Ok(parsed)
}

/// The addresses of `host`, if every one is public. Every refusal reads the same to the
/// caller; why is logged.
async fn resolve_public(host: &str) -> Result<Vec<SocketAddr>, NotAllowed> {
    let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host, 0)).await {
        Ok(addrs) => addrs.collect(),
        Err(err) => {
            tracing::info!(%host, %err, "webhook destination refused: it does not resolve");
            return Err(host_not_allowed());
        }
    };
    if let Some(private) = addrs.iter().find(|addr| !is_public(addr.ip())) {
        tracing::info!(%host, address = %private.ip(), "webhook destination refused: not a public address");
        return Err(host_not_allowed());
    }
    if addrs.is_empty() {
        tracing::info!(%host, "webhook destination refused: it has no addresses");
        return Err(host_not_allowed());
    }
    Ok(addrs)
}

/// The delivery client's resolver: public addresses only.
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let addrs = resolve_public(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_unicast_addresses_are_allowed() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "100.64.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "198.18.0.1",
            "198.19.255.254",
            "192.0.0.1",
            "192.88.99.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "64:ff9b:1::a00:1",
            "64:ff9b:1::808:808",
            "::127.0.0.1",
            "::10.0.0.1",
            "::ffff:0:7f00:1",
            "::ffff:0:a9fe:a9fe",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2002:c0a8:101::1",
            // Teredo: a public server, the client 127.0.0.1 (inverted: 80ff:fffe).
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            // Teredo: the server 10.0.0.1.
            "2001:0:a00:1:8000:63bf:f7f7:f7f7",
            "fec0::1",
            "feff::1",
            "2001:db8::1",
            "3fff::1",
            "2001:2::1",
            "2001:10::1",
            "100::1",
            "4000::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::808:808",
            "2002:808:808::1",
            // Teredo: the server 65.54.227.120, the client 8.8.8.8 (inverted: f7f7:f7f7).
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
            "2a00:1450:4001::1",
            "3fff:1000::1",
            "198.20.0.1",
            "192.0.1.1",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn a_url_needs_http_a_host_and_no_credentials_and_a_literal_must_be_public() {
        for bad in [
            "ftp://example.com/",
            "http://user:pw@example.com/",
            "not a url",
            "http://127.0.0.1:8080/hook",
            "http://[::1]/hook",
            "http://169.254.169.254/latest/meta-data",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        assert!(check_url("http://127.0.0.1:8080/hook", true).is_ok());
        assert!(check_url("http://[64:ff9b::a9fe:a9fe]/", false).is_err());
        assert!(check_url("https://hooks.example.com/natter", false).is_ok());
    }

    #[tokio::test]
    async fn a_refused_host_reads_the_same_whether_it_is_private_or_does_not_resolve() {
        let private = check_destination("http://localhost/hook", false)
            .await
            .unwrap_err();
        let unresolvable = check_destination("http://no-such-host.invalid/hook", false)
            .await
            .unwrap_err();
        let literal = check_destination("http://10.0.0.1/hook", false)
            .await
            .unwrap_err();
        assert_eq!(private.to_string(), unresolvable.to_string());
        assert_eq!(private.to_string(), literal.to_string());
    }
}
