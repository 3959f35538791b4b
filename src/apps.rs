//! Apps: the tenants of the server. Each has an id, key and secret (as in
//! Pusher and Pushi) and its own feature switches and limits. Loaded at
//! start-up from `PUSHI_APPS_FILE`, from `PUSHI_APP_ID/KEY/SECRET`, or, when
//! neither is given, a demo app with fresh credentials is created.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One app's credentials, switches and limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct App {
    /// App id (used in HTTP API paths).
    pub id: String,
    /// Public key (used by clients in the WebSocket URL).
    pub key: String,
    /// Signing secret (never sent to clients).
    pub secret: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Whether `client-*` events are relayed.
    #[serde(default = "yes")]
    pub client_events: bool,
    /// Send `pusher_internal:subscription_count` to subscribers.
    #[serde(default)]
    pub subscription_count: bool,
    /// Connections allowed for this app (0: no limit beyond the process limit).
    #[serde(default)]
    pub max_connections: usize,
    /// Disabled apps refuse connections (4003) and API calls (403).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Web hooks receiving this app's Pusher events: URLs, or `{"url", "event_types"}`.
    #[serde(default)]
    pub webhooks: Vec<Webhook>,
    /// Whether sockets may publish Pushi-style events (`{event, channel, data,
    /// echo, persist}`, any name but `pusher:`/`client-`) on the authenticated
    /// channels they are on (private, presence, personal, peer). Off by
    /// default: with it, any client can publish server-looking events.
    #[serde(default)]
    pub client_publish: bool,
    /// Whether socket publishes (with `persist`) are stored in history. Off by
    /// default: stored socket publishes let clients fill the disk up to the
    /// app's retention.
    #[serde(default)]
    pub client_persist: bool,
    /// Most events kept in this app's history (`PUSHI_HISTORY_MAX_EVENTS` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_max_events: Option<u64>,
    /// Oldest event kept, in seconds (`PUSHI_HISTORY_MAX_AGE` when unset; 0: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_max_age: Option<u64>,
    /// What a presence subscription's signature covers (see [`PresenceAuth`]).
    #[serde(default)]
    pub presence_auth: PresenceAuth,
    /// A numeric id for Pusher SDKs that take digits only (the `pusher` PyPI
    /// SDK); when absent it is the id itself (numeric ids) or derived from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pusher_id: Option<String>,
    /// Pushi's other app fields (`description`, `apn_*`, `vapid_*`, `smtp_url`, ...), kept as given.
    #[serde(flatten, default)]
    pub extra: Map<String, Value>,
}

/// One entry of an app's `webhooks`: a plain URL (every event) or an
/// object naming the event types that URL wants; written back as given.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Webhook {
    /// Every event goes to this URL.
    Url(String),
    /// Only the listed event types (`channel_occupied`, `member_added`, ...) go to `url`.
    Filtered {
        /// Where to POST.
        url: String,
        /// Event names wanted; absent or empty: all.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_types: Option<Vec<String>>,
    },
}

impl Webhook {
    /// The URL.
    pub fn url(&self) -> &str {
        match self {
            Webhook::Url(u) | Webhook::Filtered { url: u, .. } => u,
        }
    }

    /// Whether events named `name` go to this web hook.
    pub fn wants(&self, name: &str) -> bool {
        match self {
            Webhook::Filtered { event_types: Some(list), .. } if !list.is_empty() => list.iter().any(|t| t == name),
            _ => true,
        }
    }
}

fn yes() -> bool {
    true
}

impl App {
    /// An app with default switches.
    pub fn new(id: &str, key: &str, secret: &str, name: &str) -> App {
        App {
            id: id.into(),
            key: key.into(),
            secret: secret.into(),
            name: name.into(),
            client_events: true,
            subscription_count: false,
            max_connections: 0,
            enabled: true,
            webhooks: Vec::new(),
            client_publish: false,
            client_persist: false,
            history_max_events: None,
            history_max_age: None,
            presence_auth: PresenceAuth::Signed,
            pusher_id: None,
            extra: Map::new(),
        }
    }

    /// The app's numeric id for Pusher SDKs: `pusher_id` when set, the id
    /// when it is all digits, else a 15-digit number derived from the id
    /// (FNV-1a), so it is the same after every restart without being stored.
    pub fn pusher_id(&self) -> String {
        if let Some(p) = &self.pusher_id {
            return p.clone();
        }
        if is_numeric_id(&self.id) {
            return self.id.clone();
        }
        let hash = self.id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
        (hash % 900_000_000_000_000 + 100_000_000_000_000).to_string()
    }
}

/// Digits only (what the `pusher` PyPI SDK accepts as an app id).
pub fn is_numeric_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())
}

/// What the signature of a presence subscription covers, per app.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PresenceAuth {
    /// Pusher's rule: `socket_id:channel:channel_data`, so the user id is the app's word.
    #[default]
    Signed,
    /// Pushi's rule: `socket_id:channel` only (the `pushi` PyPI client's
    /// `authenticate`); the user id in channel_data is then the client's claim.
    Channel,
}

/// Names an app in the registry. Slots are never reused (a deleted app stays
/// as a tombstone), so an index stays valid for the process lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppIndex(pub u32);

impl std::fmt::Display for AppIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl AppIndex {
    /// The slot as a position in per-app tables.
    pub fn slot(self) -> usize {
        self.0 as usize
    }
}

/// All apps, looked up by key (WebSocket) or id (HTTP API).
#[derive(Debug, Default)]
pub struct Apps {
    list: Vec<App>,
    /// Slots of deleted apps (kept so indexes held elsewhere stay valid).
    removed: Vec<bool>,
    by_key: HashMap<String, AppIndex>,
    by_id: HashMap<String, AppIndex>,
}

impl Apps {
    /// Adds an app; a duplicate id, Pusher id or key is refused.
    pub fn insert(&mut self, app: App) -> Result<AppIndex, String> {
        let pusher_id = app.pusher_id();
        if self.by_key.contains_key(&app.key) || self.by_id.contains_key(&app.id) || self.by_id.contains_key(&pusher_id)
        {
            return Err(format!("app id {} (pusher_id {pusher_id}) or key {} is already in use", app.id, app.key));
        }
        if !is_numeric_id(&pusher_id) {
            return Err(format!("app {}: pusher_id {pusher_id:?} must be digits only", app.id));
        }
        let index = AppIndex(self.list.len() as u32);
        self.by_key.insert(app.key.clone(), index);
        self.by_id.insert(app.id.clone(), index);
        // The numeric Pusher id finds the app wherever its id does (`/apps/<id>/...`, `/login`).
        self.by_id.insert(pusher_id, index);
        self.list.push(app);
        self.removed.push(false);
        Ok(index)
    }

    /// Deletes an app: its key and id no longer resolve and it is disabled;
    /// the slot stays as a tombstone.
    pub fn remove(&mut self, index: AppIndex) {
        let Some(app) = self.list.get_mut(index.slot()) else { return };
        self.by_key.remove(&app.key);
        self.by_id.remove(&app.id);
        app.enabled = false;
        app.webhooks.clear();
        self.removed[index.slot()] = true;
    }

    /// The app with this public key.
    pub fn by_key(&self, key: &str) -> Option<AppIndex> {
        self.by_key.get(key).copied()
    }

    /// The app with this id or numeric Pusher id.
    pub fn by_id(&self, id: &str) -> Option<AppIndex> {
        self.by_id.get(id).copied()
    }

    /// Replaces an app's settings; its id and key (the lookup keys) stay.
    pub fn replace(&mut self, index: AppIndex, app: App) {
        let slot = &mut self.list[index.slot()];
        debug_assert!(slot.id == app.id && slot.key == app.key);
        *slot = app;
    }

    /// The app at an index.
    pub fn get(&self, index: AppIndex) -> &App {
        &self.list[index.slot()]
    }

    /// Every app (deleted ones excepted).
    pub fn iter(&self) -> impl Iterator<Item = &App> {
        self.list.iter().zip(&self.removed).filter(|(_, gone)| !**gone).map(|(a, _)| a)
    }

    /// Number of apps (deleted ones excepted).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// No apps at all.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Loads apps as configured; the flag says whether a demo app was made.
    pub fn load(env: impl Fn(&str) -> Option<String>) -> Result<(Apps, bool), String> {
        let mut apps = Apps::default();
        for app in configured_apps(env)? {
            apps.insert(app)?;
        }
        let demo = apps.is_empty();
        if demo {
            apps.insert(demo_app())?;
        }
        Ok((apps, demo))
    }
}

/// Apps from `PUSHI_APPS_FILE` and `PUSHI_APP_ID`/`_KEY`/`_SECRET`, in that order.
pub fn configured_apps(env: impl Fn(&str) -> Option<String>) -> Result<Vec<App>, String> {
    let mut list = Vec::new();
    if let Some(path) = env("PUSHI_APPS_FILE").filter(|p| !p.is_empty()) {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("PUSHI_APPS_FILE {path}: {e}"))?;
        let apps: Vec<App> = serde_json::from_str(&text).map_err(|e| format!("PUSHI_APPS_FILE {path}: {e}"))?;
        list.extend(apps);
    }
    let single = (env("PUSHI_APP_ID"), env("PUSHI_APP_KEY"), env("PUSHI_APP_SECRET"));
    match single {
        (Some(id), Some(key), Some(secret)) => list.push(App::new(&id, &key, &secret, "default")),
        (None, None, None) => {}
        _ => return Err("PUSHI_APP_ID, PUSHI_APP_KEY and PUSHI_APP_SECRET go together".into()),
    }
    Ok(list)
}

/// A demo app with fresh credentials (stored, so it survives restarts).
pub fn demo_app() -> App {
    let id = (random_u64() % 9_000_000 + 1_000_000).to_string();
    App::new(&id, &hex_token(10), &hex_token(10), "demo")
}

/// Random bytes from the OS CSPRNG (credentials must not be guessable).
pub fn random_bytes(n: usize) -> Vec<u8> {
    crate::support::rand::bytes(n)
}

/// A random u64 from the OS CSPRNG.
pub fn random_u64() -> u64 {
    crate::support::rand::u64()
}

fn hex_token(bytes: usize) -> String {
    crate::support::rand::hex_token(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_app_when_nothing_is_configured() {
        let (apps, demo) = Apps::load(|_| None).unwrap();
        assert!(demo);
        assert_eq!(apps.len(), 1);
        let app = apps.iter().next().unwrap();
        assert_eq!(app.key.len(), 20);
        assert_ne!(app.key, app.secret);
    }

    #[test]
    fn single_app_from_environment() {
        let env = |k: &str| match k {
            "PUSHI_APP_ID" => Some("1".to_string()),
            "PUSHI_APP_KEY" => Some("k".to_string()),
            "PUSHI_APP_SECRET" => Some("s".to_string()),
            _ => None,
        };
        let (apps, demo) = Apps::load(env).unwrap();
        assert!(!demo);
        assert_eq!(apps.get(apps.by_key("k").unwrap()).id, "1");
        assert!(Apps::load(|k| (k == "PUSHI_APP_ID").then(|| "1".to_string())).is_err());
    }

    #[test]
    fn apps_file_with_switches() {
        let path = std::env::temp_dir().join(format!("pushi-apps-{}.json", std::process::id()));
        std::fs::write(&path, r#"[{"id":"7","key":"k7","secret":"s7","client_events":false,"max_connections":5}]"#)
            .unwrap();
        let p = path.to_string_lossy().to_string();
        let (apps, _) = Apps::load(|k| (k == "PUSHI_APPS_FILE").then(|| p.clone())).unwrap();
        let app = apps.get(apps.by_id("7").unwrap());
        assert!(!app.client_events && app.enabled);
        assert_eq!(app.max_connections, 5);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn pusher_ids_are_numeric_and_find_the_app() {
        let mut apps = Apps::default();
        let hex = "ab".repeat(32);
        let a = apps.insert(App::new(&hex, "k1", "s1", "a")).unwrap();
        let pid = apps.get(a).pusher_id();
        assert!(is_numeric_id(&pid) && pid.len() == 15, "{pid}");
        assert_eq!(App::new(&hex, "x", "y", "z").pusher_id(), pid, "stable: derived from the id");
        assert_eq!(apps.by_id(&pid), Some(a));
        assert_eq!(apps.by_id(&hex), Some(a));
        let b = apps.insert(App::new("42", "k2", "s2", "b")).unwrap();
        assert_eq!(apps.get(b).pusher_id(), "42", "a numeric id is its own Pusher id");
        let mut clash = App::new("other", "k3", "s3", "c");
        clash.pusher_id = Some("42".into());
        assert!(apps.insert(clash).is_err(), "a Pusher id may not name another app");
        let mut bad = App::new("other", "k4", "s4", "d");
        bad.pusher_id = Some("4x".into());
        assert!(apps.insert(bad).is_err());
    }

    #[test]
    fn presence_auth_reads_both_modes() {
        let app: App = serde_json::from_str(r#"{"id":"1","key":"k","secret":"s","presence_auth":"channel"}"#).unwrap();
        assert_eq!(app.presence_auth, PresenceAuth::Channel);
        let app: App = serde_json::from_str(r#"{"id":"1","key":"k","secret":"s"}"#).unwrap();
        assert_eq!(app.presence_auth, PresenceAuth::Signed, "Pusher's rule by default");
        assert!(serde_json::from_str::<App>(r#"{"id":"1","key":"k","secret":"s","presence_auth":"x"}"#).is_err());
    }
}
