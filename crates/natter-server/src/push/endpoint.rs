//! Which push endpoints the server may talk to (SSRF defence).
//!
//! A device chooses its endpoint, so without checks it could make the server
//! send requests into the operator's own network. By default only `https://`
//! URLs to public addresses are allowed: every address the host resolves to
//! is checked, and the connection is made to a checked address (the client's
//! resolver is [`CheckedResolver`], so DNS rebinding cannot swap in another
//! one between the check and the connect). `push.allow_private_endpoints`
//! lifts this for development.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// How long a registration waits for the endpoint's host to resolve.
pub const REGISTRATION_LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Why an endpoint is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Not a URL.
    #[error("the endpoint is not a valid URL")]
    NotAUrl,
    /// Not `https://` (or `http://` when allowed).
    #[error("the endpoint must be an https:// URL")]
    Scheme,
    /// Longer than allowed.
    #[error("the endpoint is longer than {0} characters")]
    TooLong(usize),
    /// Carries a user name or password.
    #[error("the endpoint must not carry credentials")]
    Credentials,
    /// Names or resolves to a non-public address.
    #[error("the endpoint's address {0} is not a public address")]
    Private(IpAddr),
    /// Names a local host name.
    #[error("the endpoint names a local host")]
    LocalName,
}

/// Checks an endpoint's form: scheme, length, credentials, literal
/// addresses and local names. Resolution is checked separately.
///
/// # Errors
/// An [`EndpointError`] saying what is wrong.
pub fn check_url(
    endpoint: &str,
    max_chars: usize,
    allow_private: bool,
) -> Result<Url, EndpointError> {
    if endpoint.chars().count() > max_chars {
        return Err(EndpointError::TooLong(max_chars));
    }
    let url = Url::parse(endpoint).map_err(|_| EndpointError::NotAUrl)?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        _ => return Err(EndpointError::Scheme),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EndpointError::Credentials);
    }
    // The URL parser normalises literal addresses (`0x7f.1` becomes
    // `127.0.0.1`, IPv6 is bracketed), so checking the text it gives is
    // checking the address it would connect to.
    let host = url.host_str().ok_or(EndpointError::NotAUrl)?;
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        check_ip(ip, allow_private)?;
    } else {
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        let local = name == "localhost"
            || name.ends_with(".localhost")
            || name.ends_with(".local")
            || name.ends_with(".internal")
            || !name.contains('.');
        if local && !allow_private {
            return Err(EndpointError::LocalName);
        }
    }
    Ok(url)
}

/// Refuses an address that is not public, unless allowed.
///
/// # Errors
/// [`EndpointError::Private`].
pub fn check_ip(ip: IpAddr, allow_private: bool) -> Result<(), EndpointError> {
    if allow_private || is_public(ip) {
        Ok(())
    } else {
        Err(EndpointError::Private(ip))
    }
}

/// Whether an address is globally reachable: not loopback, private,
/// link-local, unique-local, shared (CGNAT), multicast, unspecified,
/// documentation, benchmarking or reserved. IPv4-mapped and -compatible
/// IPv6 addresses are judged as the IPv4 address they carry.
#[must_use]
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            is_public_v6(v6)
        }
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
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT), RFC 6598
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking, RFC 2544
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link local, fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site local (deprecated), fec0::/10
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64, could reach private IPv4
        || (s[0] == 0x2002) // 6to4, embeds an arbitrary IPv4
        || (s[0] == 0x2001 && s[1] == 0) // Teredo
        || (s[0..6] == [0, 0, 0, 0, 0, 0])) // IPv4-compatible (deprecated) and the like
}

/// Resolves a host and checks every address; refuses the host if any is
/// not public (a name mixing public and private addresses is not trusted).
///
/// # Errors
/// [`EndpointError::Private`] or the resolver's error as text.
pub async fn resolve_checked(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| ResolveError::Lookup(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(ResolveError::Lookup("no addresses".to_owned()));
    }
    for addr in &addrs {
        check_ip(addr.ip(), allow_private).map_err(ResolveError::Refused)?;
    }
    Ok(addrs)
}

/// Why a host could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    /// It did not resolve.
    #[error("the host did not resolve: {0}")]
    Lookup(String),
    /// It resolved to a refused address.
    #[error(transparent)]
    Refused(EndpointError),
}

/// The push client's resolver: resolves with the system resolver and hands
/// the connector only addresses that passed [`check_ip`], so the address
/// checked is the address connected to.
#[derive(Debug, Clone, Copy)]
pub struct CheckedResolver {
    /// `push.allow_private_endpoints`.
    pub allow_private: bool,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs = resolve_checked(name.as_str(), 0, allow_private).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn non_public_ranges_are_refused() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip(bad)), "{bad} must be refused");
            assert!(
                check_ip(ip(bad), true).is_ok(),
                "{bad} allowed in development"
            );
        }
        for good in ["8.8.8.8", "1.1.1.1", "2a00:1450:4001::1", "::ffff:8.8.8.8"] {
            assert!(is_public(ip(good)), "{good} is public");
        }
    }

    #[tokio::test]
    async fn names_are_judged_by_the_addresses_they_resolve_to() {
        // `localhost` resolves from the hosts file, with no network.
        assert!(matches!(
            resolve_checked("localhost", 443, false).await,
            Err(ResolveError::Refused(EndpointError::Private(_)))
        ));
        assert!(resolve_checked("localhost", 443, true).await.is_ok());
        // The client's resolver refuses the same way, so a connect never
        // reaches an address the check did not pass.
        let name: Name = "localhost".parse().unwrap();
        assert!(
            CheckedResolver {
                allow_private: false
            }
            .resolve(name)
            .await
            .is_err()
        );
        let name: Name = "localhost".parse().unwrap();
        assert!(
            CheckedResolver {
                allow_private: true
            }
            .resolve(name)
            .await
            .is_ok()
        );
    }

    #[test]
    fn urls_are_checked_for_scheme_credentials_length_and_local_names() {
        let max = 64;
        assert!(check_url("https://push.example.com/abc", max, false).is_ok());
        assert_eq!(
            check_url("http://push.example.com/abc", max, false),
            Err(EndpointError::Scheme)
        );
        assert!(check_url("http://127.0.0.1:8000/x", max, true).is_ok());
        assert_eq!(
            check_url("ftp://push.example.com/", max, true),
            Err(EndpointError::Scheme)
        );
        assert_eq!(
            check_url("https://127.0.0.1/x", max, false),
            Err(EndpointError::Private(ip("127.0.0.1")))
        );
        assert_eq!(
            check_url("https://[::ffff:192.168.0.1]/x", max, false),
            Err(EndpointError::Private(ip("::ffff:192.168.0.1")))
        );
        assert_eq!(
            check_url("https://localhost/x", max, false),
            Err(EndpointError::LocalName)
        );
        assert_eq!(
            check_url("https://intranet/x", max, false),
            Err(EndpointError::LocalName)
        );
        assert_eq!(
            check_url("https://u:p@push.example.com/x", max, false),
            Err(EndpointError::Credentials)
        );
        let at_max = format!("https://push.example.com/{}", "a".repeat(max - 25));
        assert_eq!(at_max.chars().count(), max);
        assert!(check_url(&at_max, max, false).is_ok());
        assert_eq!(
            check_url(&format!("{at_max}a"), max, false),
            Err(EndpointError::TooLong(max))
        );
        assert_eq!(
            check_url("not a url", max, false),
            Err(EndpointError::NotAUrl)
        );
    }
}
