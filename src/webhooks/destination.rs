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

/// Why a destination is refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotAllowed(pub String);

/// Whether a webhook may be sent to `ip`: a public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(mapped) => is_public_v4(mapped),
            None => is_public_v6(ip),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
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
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local (fc00::/7) and link-local (fe80::/10).
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80)
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
        return Err(NotAllowed(format!("{ip} is not a public address")));
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

/// The addresses of `host`, if every one is public.
async fn resolve_public(host: &str) -> Result<Vec<SocketAddr>, NotAllowed> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| NotAllowed(format!("{host} does not resolve: {e}")))?
        .collect();
    if let Some(private) = addrs.iter().find(|addr| !is_public(addr.ip())) {
        return Err(NotAllowed(format!(
            "{host} resolves to {}, which is not a public address",
            private.ip()
        )));
    }
    if addrs.is_empty() {
        return Err(NotAllowed(format!("{host} has no addresses")));
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
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
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
        assert!(check_url("https://hooks.example.com/natter", false).is_ok());
    }
}
