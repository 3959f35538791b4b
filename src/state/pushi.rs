//! Pushi's in-memory indexes, kept in step with the store: personal-channel
//! aliases, handler targets, REST session tokens and `/login` rate buckets.
//! Plain data on the reactor thread.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::apps::AppIndex;
use crate::channels::SessionKey;
use crate::store::{SubscriptionRecord, TargetRecord};
use crate::support::rate::TokenBucket;

/// Session tokens live this long without use (Pushi: 31 days).
pub const LOGIN_TTL: Duration = Duration::from_secs(31 * 24 * 3600);
/// Session tokens kept per app; its own least recently used go first, so
/// one tenant's logins never log another tenant out.
pub const MAX_LOGINS_PER_APP: usize = 256;
/// `/login` attempts per client address in a burst (then `PUSHI_LOGIN_RATE` per second).
pub const LOGIN_BURST_PER_ADDRESS: f64 = 30.0;
/// An app id's allowance (whatever the address) is this many times an address's.
pub const LOGIN_APP_FACTOR: f64 = 5.0;

/// In-memory indexes of Pushi's stored state, kept in step with the store.
#[derive(Default)]
pub struct PushiState {
    /// `(app, user_id)` → channels aggregated by `personal-<user_id>`.
    pub aliases: HashMap<(AppIndex, String), Vec<String>>,
    /// `(app, channel)` → users subscribed to it (who get an association per persisted event).
    pub alias_users: HashMap<(AppIndex, String), Vec<String>>,
    /// `(app, user_id)` → sessions subscribed to `personal-<user_id>`.
    pub personal_sessions: HashMap<(AppIndex, String), Vec<SessionKey>>,
    /// `(app, channel)` → handler targets receiving its events (`/webs`, `/smtps`, `/apns`, `/web_pushes`).
    pub targets: HashMap<(AppIndex, String), Vec<TargetRecord>>,
    /// REST session tokens (`/login`) → app and last use.
    pub logins: HashMap<String, (AppIndex, Instant)>,
    /// Session tokens per app (to cap them per app).
    pub logins_per_app: HashMap<AppIndex, usize>,
    /// `/login` attempts per client address and per app id.
    pub login_buckets: HashMap<LoginKey, TokenBucket>,
}

/// What a `/login` attempt is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LoginKey {
    /// The client's IP address.
    Address(std::net::IpAddr),
    /// The app id named in the attempt.
    App(String),
}

/// Most `/login` rate buckets remembered; full ones are forgotten first.
const MAX_LOGIN_BUCKETS: usize = 10_000;

impl PushiState {
    /// Counts a `/login` attempt against its address and app id; the error is
    /// the number of seconds to wait.
    pub fn login_allowed(&mut self, peer: Option<std::net::IpAddr>, app_id: &str, rate: f64) -> Result<(), u64> {
        if rate <= 0.0 {
            return Ok(());
        }
        let (app_rate, app_burst) = (rate * LOGIN_APP_FACTOR, LOGIN_BURST_PER_ADDRESS * LOGIN_APP_FACTOR);
        if self.login_buckets.len() >= MAX_LOGIN_BUCKETS {
            self.login_buckets.retain(|k, b| match k {
                LoginKey::Address(_) => !b.is_full(rate, LOGIN_BURST_PER_ADDRESS),
                LoginKey::App(_) => !b.is_full(app_rate, app_burst),
            });
        }
        let mut keys = vec![(LoginKey::App(app_id.chars().take(200).collect()), app_rate, app_burst)];
        if let Some(ip) = peer {
            keys.push((LoginKey::Address(ip), rate, LOGIN_BURST_PER_ADDRESS));
        }
        for (key, rate, burst) in keys {
            let bucket = self.login_buckets.entry(key).or_insert_with(|| TokenBucket::full(burst));
            if !bucket.take(rate, burst) {
                return Err(bucket.retry_after(rate));
            }
        }
        Ok(())
    }

    /// Records a new session token; past the app's cap its own least
    /// recently used token goes (never another app's).
    pub fn add_login(&mut self, app: AppIndex, token: String) {
        let count = self.logins_per_app.entry(app).or_default();
        if *count >= MAX_LOGINS_PER_APP {
            let before = self.logins.len();
            self.logins.retain(|_, (a, used)| *a != app || used.elapsed() < LOGIN_TTL);
            *count -= before - self.logins.len();
            if *count >= MAX_LOGINS_PER_APP {
                let oldest = self.logins.iter().filter(|(_, (a, _))| *a == app).min_by_key(|(_, (_, used))| *used);
                if let Some(k) = oldest.map(|(k, _)| k.clone()) {
                    self.logins.remove(&k);
                    *count -= 1;
                }
            }
        }
        *count += 1;
        self.logins.insert(token, (app, Instant::now()));
    }

    /// Forgets a session token (logout, expiry).
    pub fn remove_login(&mut self, token: &str) {
        if let Some((app, _)) = self.logins.remove(token) {
            if let Some(n) = self.logins_per_app.get_mut(&app) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Forgets every session token of an app (it was deleted).
    pub fn remove_logins_of(&mut self, app: AppIndex) {
        self.logins.retain(|_, (a, _)| *a != app);
        self.logins_per_app.remove(&app);
    }

    /// Registers a stored subscription in the alias maps; false if already known.
    pub fn add_alias(&mut self, app: AppIndex, sub: &SubscriptionRecord) -> bool {
        let channels = self.aliases.entry((app, sub.user_id.clone())).or_default();
        if channels.contains(&sub.event) {
            return false;
        }
        channels.push(sub.event.clone());
        self.alias_users.entry((app, sub.event.clone())).or_default().push(sub.user_id.clone());
        true
    }

    /// Forgets a removed subscription; false if it was not known.
    pub fn remove_alias(&mut self, app: AppIndex, user_id: &str, channel: &str) -> bool {
        let key = (app, user_id.to_string());
        let Some(channels) = self.aliases.get_mut(&key) else { return false };
        let before = channels.len();
        channels.retain(|c| c != channel);
        let removed = channels.len() != before;
        if channels.is_empty() {
            self.aliases.remove(&key);
        }
        let ukey = (app, channel.to_string());
        if let Some(users) = self.alias_users.get_mut(&ukey) {
            users.retain(|u| u != user_id);
            if users.is_empty() {
                self.alias_users.remove(&ukey);
            }
        }
        removed
    }

    /// Registers a handler target; false if already known.
    pub fn add_target(&mut self, app: AppIndex, t: &TargetRecord) -> bool {
        let list = self.targets.entry((app, t.event.clone())).or_default();
        if list.iter().any(|x| x.kind == t.kind && x.target == t.target) {
            return false;
        }
        list.push(t.clone());
        true
    }

    /// Forgets a removed handler target.
    pub fn remove_target(&mut self, app: AppIndex, t: &TargetRecord) {
        let key = (app, t.event.clone());
        if let Some(list) = self.targets.get_mut(&key) {
            list.retain(|x| !(x.kind == t.kind && x.target == t.target));
            if list.is_empty() {
                self.targets.remove(&key);
            }
        }
    }

    /// Forgets a target on every channel (the remote reported it gone).
    pub fn remove_target_everywhere(&mut self, app: AppIndex, kind: &str, target: &str) {
        self.targets.retain(|(a, _), list| {
            if *a == app {
                list.retain(|x| !(x.kind == kind && x.target == target));
            }
            !list.is_empty()
        });
    }
}
