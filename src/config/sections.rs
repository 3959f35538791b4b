//! The plain settings each module is started with: the store backend and
//! retention, the delivery pool, the server's SMTP defaults and the outbound
//! allow-list. Data only: the modules that use them import them from here,
//! this file imports nothing from the crate.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which store backend to open, from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// SQLite database `pushi.db` in this directory.
    Embedded(PathBuf),
    /// A MongoDB URL (database from its path, else `pushi`).
    Mongo(String),
    /// A private in-memory SQLite database per worker (fuzzing and tests; not durable).
    Memory,
}

impl StoreConfig {
    /// For logs: where the data lives (no credentials).
    pub fn describe(&self) -> String {
        match self {
            StoreConfig::Embedded(dir) => format!("embedded SQLite store in {}", dir.join("pushi.db").display()),
            StoreConfig::Memory => "in-memory SQLite store (not durable)".to_string(),
            StoreConfig::Mongo(url) => {
                // mongodb://user:pass@host/db → mongodb://host/db
                let shown = match (url.find("://"), url.rfind('@')) {
                    (Some(s), Some(at)) if at > s => format!("{}{}", &url[..s + 3], &url[at + 1..]),
                    _ => url.clone(),
                };
                format!("MongoDB at {shown}")
            }
        }
    }
}

/// How much history an app keeps: the newest `max_events` events, none older
/// than `max_age_secs` seconds (0: no age limit). Keeps one tenant from
/// filling the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most events stored per app.
    pub max_events: u64,
    /// Oldest event kept, in seconds (0: no limit).
    pub max_age_secs: u64,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention { max_events: 10_000, max_age_secs: 30 * 24 * 3600 }
    }
}

/// Server-wide settings of the delivery pool (web hooks, e-mail, Web Push, APNs).
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Dispatch handlers on publishes at all (`PUSHI_HANDLERS`).
    pub enabled: bool,
    /// Worker threads (`PUSHI_HANDLER_WORKERS`).
    pub workers: usize,
    /// Deliveries queued, running or waiting for a retry, beyond which new ones are dropped.
    pub queue: usize,
    /// Time allowed for one attempt (`PUSHI_HANDLER_TIMEOUT`).
    pub timeout: Duration,
    /// Most deliveries of one app queued, running or waiting to retry (`PUSHI_DELIVERY_APP_QUEUE`).
    pub app_queue: usize,
    /// Most workers one app holds at once (`PUSHI_DELIVERY_APP_WORKERS`).
    pub app_workers: usize,
    /// Where tenants' requests may go although private (`PUSHI_OUTBOUND_ALLOW`).
    pub outbound: OutboundAllow,
    /// Server default SMTP settings (`SMTP_*`).
    pub smtp: SmtpDefaults,
    /// `TTL` header of Web Push requests, seconds.
    pub web_push_ttl: u64,
    /// APNs base URL overriding Apple's hosts (tests, proxies); empty: Apple's.
    pub apns_url: String,
}

impl Default for DeliveryConfig {
    fn default() -> DeliveryConfig {
        DeliveryConfig {
            enabled: true,
            workers: 4,
            queue: 10_000,
            timeout: Duration::from_secs(5),
            app_queue: 1000,
            app_workers: 2,
            outbound: OutboundAllow::default(),
            smtp: SmtpDefaults::default(),
            web_push_ttl: 86_400,
            apns_url: String::new(),
        }
    }
}

/// The server's `SMTP_*` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmtpDefaults {
    /// `SMTP_URL`.
    pub url: String,
    /// `SMTP_HOST`.
    pub host: String,
    /// `SMTP_PORT`.
    pub port: u16,
    /// `SMTP_USER`.
    pub user: String,
    /// `SMTP_PASSWORD`.
    pub password: String,
    /// `SMTP_STARTTLS`.
    pub starttls: bool,
    /// `SMTP_SENDER`.
    pub sender: String,
}

/// One exception of `PUSHI_OUTBOUND_ALLOW`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowRule {
    /// An address block: network address and prefix length.
    Net(IpAddr, u8),
    /// A host name, as written in URLs (lower case).
    Host(String),
}

/// `PUSHI_OUTBOUND_ALLOW` parsed: the exceptions to the outbound policy
/// (the outbound policy applies them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundAllow {
    /// The exceptions, in the order given.
    pub rules: Vec<AllowRule>,
}

impl OutboundAllow {
    /// Parses `PUSHI_OUTBOUND_ALLOW`: CIDRs (`127.0.0.1/32`, `10.0.0.0/8`,
    /// `::1/128`), bare addresses (a /32 or /128) and host names, separated
    /// by commas or spaces.
    pub fn parse(text: &str) -> Result<OutboundAllow, String> {
        let mut rules = Vec::new();
        for item in text.split([',', ' ', '\t', '\n']).map(str::trim).filter(|s| !s.is_empty()) {
            let (addr, bits) = match item.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (item, None),
            };
            let addr = addr.trim_start_matches('[').trim_end_matches(']');
            match addr.parse::<IpAddr>() {
                Ok(ip) => {
                    let max = if ip.is_ipv4() { 32 } else { 128 };
                    let bits = match bits {
                        None => max,
                        Some(b) => b
                            .parse::<u8>()
                            .ok()
                            .filter(|b| *b <= max)
                            .ok_or_else(|| format!("PUSHI_OUTBOUND_ALLOW: bad prefix length in {item:?}"))?,
                    };
                    rules.push(AllowRule::Net(ip, bits));
                }
                Err(_) if bits.is_none() && valid_host(item) => rules.push(AllowRule::Host(item.to_ascii_lowercase())),
                Err(_) => return Err(format!("PUSHI_OUTBOUND_ALLOW: {item:?} is neither a CIDR nor a host name")),
            }
        }
        Ok(OutboundAllow { rules })
    }
}

fn valid_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_parses_cidrs_addresses_and_hosts() {
        let a = OutboundAllow::parse("127.0.0.1/32, 10.1.0.0/16 Receiver.Internal ::1").unwrap();
        assert_eq!(
            a.rules,
            [
                AllowRule::Net("127.0.0.1".parse().unwrap(), 32),
                AllowRule::Net("10.1.0.0".parse().unwrap(), 16),
                AllowRule::Host("receiver.internal".into()),
                AllowRule::Net("::1".parse().unwrap(), 128),
            ]
        );
        assert!(OutboundAllow::parse("10.0.0.0/33").is_err());
        assert!(OutboundAllow::parse("not a/host").is_err());
        assert_eq!(OutboundAllow::parse("").unwrap(), OutboundAllow::default());
    }
}
