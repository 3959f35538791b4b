//! Signed-in web consoles: a session token (the `HttpOnly`, `SameSite=Strict`
//! cookie), its scope (one app or the operator), a CSRF token the page sends
//! back on every change, and an expiry. Bounded in count; failed sign-ins are
//! limited per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::tap::Scope;
use crate::support::rate::TokenBucket;

/// How long a console session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Console sessions held at most; the oldest goes when a new one needs room.
pub const MAX_SESSIONS: usize = 1024;
/// Failed sign-ins per second allowed per client address, and the burst.
pub const FAILURE_RATE: f64 = 0.2;
/// See [`FAILURE_RATE`].
pub const FAILURE_BURST: f64 = 10.0;
/// Client addresses whose failures are remembered at most.
const MAX_FAILURE_ADDRESSES: usize = 4096;

/// One signed-in console.
#[derive(Debug, Clone)]
pub struct ConsoleSession {
    /// What it may see.
    pub scope: Scope,
    /// The token the page must send in `X-Console-CSRF` with every change.
    pub csrf: String,
    /// When it was made (the oldest is evicted first).
    pub created: Instant,
}

/// Every console session, by its cookie token.
#[derive(Debug, Default)]
pub struct ConsoleSessions {
    by_token: HashMap<String, ConsoleSession>,
    failures: HashMap<IpAddr, TokenBucket>,
}

impl ConsoleSessions {
    /// Starts a session; returns its cookie token and CSRF token.
    pub fn create(&mut self, scope: Scope) -> (String, String) {
        self.by_token.retain(|_, s| s.created.elapsed() < SESSION_TTL);
        if self.by_token.len() >= MAX_SESSIONS {
            if let Some(oldest) = self.by_token.iter().min_by_key(|(_, s)| s.created).map(|(t, _)| t.clone()) {
                self.by_token.remove(&oldest);
            }
        }
        let token = crate::support::rand::hex_token(32);
        let csrf = crate::support::rand::hex_token(32);
        self.by_token.insert(token.clone(), ConsoleSession { scope, csrf: csrf.clone(), created: Instant::now() });
        (token, csrf)
    }

    /// The live session of a cookie token.
    pub fn get(&self, token: &str) -> Option<&ConsoleSession> {
        self.by_token.get(token).filter(|s| s.created.elapsed() < SESSION_TTL)
    }

    /// Ends a session (sign-out).
    pub fn remove(&mut self, token: &str) {
        self.by_token.remove(token);
    }

    /// Whether this address may try to sign in again after a failure
    /// (counts the failure); an unknown address shares one bucket.
    pub fn failure_allowed(&mut self, ip: Option<IpAddr>) -> bool {
        let ip = ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        if self.failures.len() >= MAX_FAILURE_ADDRESSES && !self.failures.contains_key(&ip) {
            self.failures.retain(|_, b| !b.is_full(FAILURE_RATE, FAILURE_BURST));
            if self.failures.len() >= MAX_FAILURE_ADDRESSES {
                return false;
            }
        }
        self.failures.entry(ip).or_insert_with(|| TokenBucket::full(FAILURE_BURST)).take(FAILURE_RATE, FAILURE_BURST)
    }

    /// Whether this address has used up its failed sign-ins (checked before trying).
    pub fn locked_out(&self, ip: Option<IpAddr>) -> bool {
        let ip = ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        self.failures.get(&ip).is_some_and(|b| {
            let mut probe = *b;
            !probe.take(FAILURE_RATE, FAILURE_BURST)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::AppIndex;

    #[test]
    fn sessions_have_distinct_tokens_and_end_on_sign_out() {
        let mut s = ConsoleSessions::default();
        let (a, csrf_a) = s.create(Scope::App(AppIndex(0)));
        let (b, _) = s.create(Scope::Operator);
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(s.get(&a).unwrap().csrf, csrf_a);
        assert_eq!(s.get(&b).unwrap().scope, Scope::Operator);
        s.remove(&a);
        assert!(s.get(&a).is_none());
        assert!(s.get("nonsense").is_none());
    }

    #[test]
    fn the_oldest_session_makes_room() {
        let mut s = ConsoleSessions::default();
        let (first, _) = s.create(Scope::Operator);
        for _ in 1..MAX_SESSIONS {
            s.create(Scope::Operator);
        }
        assert!(s.get(&first).is_some());
        s.create(Scope::Operator);
        assert!(s.get(&first).is_none());
        assert_eq!(s.by_token.len(), MAX_SESSIONS);
    }

    #[test]
    fn failures_are_limited_per_address() {
        let mut s = ConsoleSessions::default();
        let ip = Some(IpAddr::from([10, 0, 0, 1]));
        assert!(!s.locked_out(ip));
        for _ in 0..FAILURE_BURST as usize {
            assert!(s.failure_allowed(ip));
        }
        assert!(s.locked_out(ip));
        assert!(!s.locked_out(Some(IpAddr::from([10, 0, 0, 2]))));
    }
}
