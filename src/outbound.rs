//! The outbound policy: every request the server makes on a tenant's behalf
//! (Pusher web hooks, `/webs`, Web Push endpoints, an app's `smtp_url`,
//! `/messaging/*`) may only reach public addresses. Loopback, private,
//! link-local, CGNAT, multicast, unspecified, reserved and the IPv4-mapped /
//! -compatible / NAT64 / 6to4 forms of those are refused unless
//! `PUSHI_OUTBOUND_ALLOW` (CIDRs and host names) opens them.
//!
//! The check is made on the addresses the resolver returned, and only those
//! are handed to the connector: a host name resolving to a public address
//! for a check and to 127.0.0.1 for the connection (DNS rebinding) cannot
//! pass, as there is one resolution. Redirects are not followed, and every
//! connect failure (policy, DNS, refused, timeout, TLS) reads the same
//! [`UNREACHABLE`], so a tenant cannot map ports by error text.
//!
//! Operator-configured targets (`SMTP_*`, `PUSHI_APNS_URL`, Apple's hosts)
//! are trusted and not filtered.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use crate::config::{AllowRule, OutboundAllow};

/// The one error text of every failed connection to a tenant's target.
pub const UNREACHABLE: &str = "the target could not be reached (refused, unreachable, timed out or not allowed)";

/// Most targets (URLs, tokens, endpoints) one `/messaging` call may name.
pub const MAX_TARGETS: usize = 100;
/// Most e-mail recipients one `/messaging` call may name.
pub const MAX_RECIPIENTS: usize = 50;

/// Which destinations tenants' requests may reach: the default refusals
/// below, minus the configured exceptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    allow: OutboundAllow,
}

impl Policy {
    /// The policy with these exceptions (`PUSHI_OUTBOUND_ALLOW`, parsed by `config`).
    pub fn new(allow: OutboundAllow) -> Policy {
        Policy { allow }
    }

    /// Parses `PUSHI_OUTBOUND_ALLOW` (see [`OutboundAllow::parse`]).
    pub fn parse(text: &str) -> Result<Policy, String> {
        OutboundAllow::parse(text).map(Policy::new)
    }

    /// Whether a connection to `ip`, reached through host name `host`, is allowed.
    pub fn allows(&self, host: &str, ip: IpAddr) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let excepted = self.allow.rules.iter().any(|a| match a {
            AllowRule::Host(h) => *h == host,
            AllowRule::Net(net, bits) => in_net(ip, *net, *bits),
        });
        excepted || !denied(ip)
    }

    /// The addresses of `host:port` this policy lets us connect to (resolved
    /// once; the caller connects to these, never resolves again).
    pub fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let found = (bare, port).to_socket_addrs().map_err(|_| UNREACHABLE.to_string())?;
        let ok: Vec<SocketAddr> = found.filter(|a| self.allows(host, a.ip())).collect();
        if ok.is_empty() {
            return Err(UNREACHABLE.to_string());
        }
        Ok(ok)
    }
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits as u32) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits as u32) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Whether an address is refused by default (not a public unicast one).
pub fn denied(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => denied_v4(v4),
        IpAddr::V6(v6) => denied_v6(v6),
    }
}

fn denied_v4(ip: Ipv4Addr) -> bool {
    let n = u32::from(ip);
    let within = |net: [u8; 4], bits: u8| in_net(IpAddr::V4(ip), IpAddr::V4(Ipv4Addr::from(net)), bits);
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || within([0, 0, 0, 0], 8) // "this network"
        || within([100, 64, 0, 0], 10) // CGNAT
        || within([192, 0, 0, 0], 24) // IETF protocol assignments
        || within([198, 18, 0, 0], 15) // benchmarking
        || n >= 0xF000_0000 // 240.0.0.0/4 reserved
}

fn denied_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let n = u128::from(ip);
    // IPv4-mapped (::ffff:a.b.c.d), -compatible (::a.b.c.d), NAT64 (64:ff9b::/96),
    // 6to4 (2002::/16): never a way around the IPv4 rules, refused outright.
    let mapped = n >> 32 == 0xffff;
    let compatible = n >> 32 == 0;
    let nat64 = s[0] == 0x64 && s[1] == 0xff9b;
    let six_to_four = s[0] == 0x2002;
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || mapped
        || compatible
        || nat64
        || six_to_four
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] < 0x200) // Teredo, benchmarking, ORCHID
        || s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0 // discard
}

/// Checks an app's `webhooks` URL: http or https with a host, nothing else
/// (no `file://`, no user info). The error says why.
pub fn check_hook_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') || url.len() > 2048 || url.chars().any(char::is_whitespace) {
        return Err(format!("{url:?} is not an http:// or https:// URL with a host"));
    }
    Ok(())
}

/// Pusher web hook event names an app's `event_types` may list.
pub const HOOK_EVENTS: &[&str] =
    &["channel_occupied", "channel_vacated", "member_added", "member_removed", "client_event", "cache_miss"];

/// Most web hooks one app may have.
pub const MAX_WEBHOOKS: usize = 20;

/// Checks an app's `webhooks` (on every write and at start-up): http(s) URLs
/// only, known event types, at most [`MAX_WEBHOOKS`].
pub fn check_webhooks(hooks: &[crate::apps::Webhook]) -> Result<(), String> {
    if hooks.len() > MAX_WEBHOOKS {
        return Err(format!("at most {MAX_WEBHOOKS} web hooks per app"));
    }
    for h in hooks {
        check_hook_url(h.url())?;
        if let crate::apps::Webhook::Filtered { event_types: Some(list), .. } = h {
            if let Some(bad) = list.iter().find(|t| !HOOK_EVENTS.contains(&t.as_str())) {
                return Err(format!("unknown event type {bad:?} (one of {})", HOOK_EVENTS.join(", ")));
            }
        }
    }
    Ok(())
}

/// Request headers a tenant may not set on `/messaging` web hooks: the
/// connection's own framing and routing (`Host`, `Content-Length`, hop-by-hop
/// headers), cookies and credentials (`Cookie`, `Authorization`,
/// `Proxy-Authorization`: refused so stored or third-party credentials are
/// never replayed from the server's address).
pub const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "cookie",
    "authorization",
    "proxy-authorization",
];

/// Checks one header a tenant wants sent; the error says why not.
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || name.len() > 256 || !name.bytes().all(token) {
        return Err(format!("{name:?} is not a header name"));
    }
    if FORBIDDEN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!("the {name} header may not be set"));
    }
    if value.len() > 8192 || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(format!("the value of {name} is not a header value"));
    }
    Ok(())
}

/// ureq's resolver with the policy applied: resolves once, keeps only the
/// allowed addresses; ureq connects to exactly these.
#[derive(Debug)]
struct PolicyResolver {
    policy: Arc<Policy>,
    inner: DefaultResolver,
}

impl Resolver for PolicyResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().unwrap_or("");
        let found = self.inner.resolve(uri, config, timeout)?;
        let mut out = self.empty();
        for a in found.iter().filter(|a| self.policy.allows(host, a.ip())) {
            out.push(*a);
        }
        if out.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(out)
    }
}

/// An HTTP client for tenants' targets: policy-checked addresses, no proxy
/// from the environment, no redirects, 3xx answered as they are, one
/// `timeout` per attempt.
pub fn agent(policy: Arc<Policy>, timeout: Duration) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .proxy(None)
        .user_agent("pushi")
        .build();
    ureq::Agent::with_parts(
        config,
        DefaultConnector::default(),
        PolicyResolver { policy, inner: DefaultResolver::default() },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_and_special_addresses_are_denied() {
        for a in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.5.5",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(denied(ip(a)), "{a} must be denied");
        }
        for a in ["8.8.8.8", "1.1.1.1", "100.128.0.1", "2606:4700::1111", "2a00:1450::1"] {
            assert!(!denied(ip(a)), "{a} must be allowed");
        }
    }

    #[test]
    fn exceptions_by_cidr_and_host() {
        let p = Policy::parse("127.0.0.1/32, 10.1.0.0/16 receiver.internal ::1").unwrap();
        assert!(p.allows("x", ip("127.0.0.1")));
        assert!(!p.allows("x", ip("127.0.0.2")));
        assert!(p.allows("x", ip("10.1.200.3")) && !p.allows("x", ip("10.2.0.1")));
        assert!(p.allows("Receiver.Internal", ip("192.168.0.9")));
        assert!(p.allows("[::1]", ip("::1")));
        assert!(Policy::default().allows("x", ip("8.8.8.8")));
        assert!(!Policy::default().allows("localhost", ip("127.0.0.1")));
        assert!(Policy::parse("10.0.0.0/33").is_err());
        assert!(Policy::parse("not a/host").is_err());
        assert_eq!(Policy::parse("").unwrap(), Policy::default());
    }

    #[test]
    fn resolution_filters_every_address() {
        assert_eq!(Policy::default().resolve("127.0.0.1", 80).unwrap_err(), UNREACHABLE);
        // inet_aton's hexadecimal form is the same address and is refused the same way.
        assert_eq!(Policy::default().resolve("0x7f000001", 80).unwrap_err(), UNREACHABLE);
        let open = Policy::parse("127.0.0.0/8").unwrap();
        assert_eq!(open.resolve("127.0.0.1", 25).unwrap(), vec!["127.0.0.1:25".parse().unwrap()]);
    }

    #[test]
    fn hook_urls_and_headers() {
        assert!(check_hook_url("https://example.com/hook").is_ok());
        assert!(check_hook_url("http://127.0.0.1:9/x").is_ok(), "addresses are checked when connecting");
        for bad in ["file:///etc/passwd", "gopher://x", "http://", "http://user:pw@host/", "ftp://x", "http://a b"] {
            assert!(check_hook_url(bad).is_err(), "{bad}");
        }
        assert!(check_header("X-Token", "abc").is_ok());
        for name in ["Host", "cookie", "Authorization", "Content-Length", "Transfer-Encoding", "Connection"] {
            assert!(check_header(name, "x").is_err(), "{name}");
        }
        assert!(check_header("X-A", "a\r\nHost: evil").is_err());
        assert!(check_header("Bad Name", "x").is_err());
    }
}
