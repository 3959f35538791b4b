//! Channels and sessions: who is subscribed to what. Two slab-indexed tables
//! point at each other (a channel holds session keys, a session holds its
//! channel keys and its slot in each), so unsubscribing and disconnecting
//! cost O(own subscriptions). Presence members are counted per `user_id`
//! across connections. Knows nothing of sockets or JSON on the wire.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use slab::Slab;

use crate::apps::AppIndex;
use crate::outbox::ConnId;

/// Names a session (a Pusher WebSocket) in the session table; a stale key
/// finds nothing (lookups return `Option`), it never panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey(pub u32);

/// Names a channel in the channel table; freed keys may be reused, so a
/// subscription keeps its key only while it holds the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelKey(pub u32);

/// Longest channel name accepted (the official SDKs check 200; hosted Pusher documents 164).
pub const MAX_CHANNEL_NAME: usize = 200;

/// What a channel's name makes it (Pusher prefixes; Pushi's come later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// Anyone may subscribe.
    Public,
    /// `private-`: needs a signed auth.
    Private,
    /// `private-encrypted-`: private, payloads are end-to-end encrypted; no client events.
    PrivateEncrypted,
    /// `presence-`: private plus member lists.
    Presence,
    /// `#server-to-user-<id>`: only the connections signed in as that user.
    ServerToUser,
    /// Pushi's `personal-<user_id>`: every channel the user is subscribed to
    /// through the REST API, plus the user's stored history. Never a channel itself.
    Personal,
    /// Pushi's `peer-<base>:<a>&<b>`: the private pair channel of two members
    /// of `presence-<base>` who joined with `"peer": true`.
    Peer,
}

impl ChannelKind {
    /// Kind and whether the channel caches its last event, from the name.
    pub fn of(name: &str) -> (ChannelKind, bool) {
        let after = |p: &str| name.strip_prefix(p);
        if name.starts_with("#server-to-user-") {
            (ChannelKind::ServerToUser, false)
        } else if name.starts_with("personal-") {
            (ChannelKind::Personal, false)
        } else if name.starts_with("peer-") {
            (ChannelKind::Peer, false)
        } else if let Some(rest) = after("private-encrypted-") {
            (ChannelKind::PrivateEncrypted, rest.starts_with("cache-"))
        } else if let Some(rest) = after("private-") {
            (ChannelKind::Private, rest.starts_with("cache-"))
        } else if let Some(rest) = after("presence-") {
            (ChannelKind::Presence, rest.starts_with("cache-"))
        } else {
            (ChannelKind::Public, name.starts_with("cache-"))
        }
    }

    /// Whether subscribing needs a signature.
    pub fn needs_auth(self) -> bool {
        matches!(
            self,
            ChannelKind::Private
                | ChannelKind::PrivateEncrypted
                | ChannelKind::Presence
                | ChannelKind::Personal
                | ChannelKind::Peer
        )
    }
}

/// Pusher's channel-name rule: `[A-Za-z0-9_\-=@,.;]`, 1 to 200 characters;
/// `#server-to-user-<id>` is the one reserved name a client may use.
pub fn valid_channel_name(name: &str) -> bool {
    let body = name.strip_prefix("#server-to-user-").unwrap_or(name);
    !body.is_empty()
        && name.len() <= MAX_CHANNEL_NAME
        && body.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b))
}

/// Names a client may subscribe to or publish on: Pusher's, plus Pushi's
/// peer pair channels (`peer-<base>:<a>&<b>`, whose user ids may hold any
/// printable character).
pub fn valid_pushi_channel_name(name: &str) -> bool {
    valid_channel_name(name)
        || (name.starts_with("peer-")
            && name.contains(':')
            && name.len() <= MAX_CHANNEL_NAME
            && !name.chars().any(char::is_control))
}

/// Event names: 1 to 200 characters, no control characters (Laravel sends `App\Events\X`).
pub fn valid_event_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 200 && !name.chars().any(char::is_control)
}

/// A presence member: how many of its connections are in the channel, and its info.
#[derive(Debug, Clone)]
pub struct Member {
    /// Connections of this user in the channel.
    pub connections: u32,
    /// `user_info` from the first connection's channel_data.
    pub info: serde_json::Value,
    /// The user id was sent as a JSON number (it is sent back as one).
    pub numeric: bool,
}

/// The last event of a cache channel (message text without the frame).
#[derive(Debug, Clone)]
pub struct CachedEvent {
    /// The JSON message as sent to subscribers.
    pub message: String,
    /// When it was published (it expires after the cache TTL).
    pub at: Instant,
}

/// One channel of one app.
#[derive(Debug)]
pub struct Channel {
    /// Owning app.
    pub app: AppIndex,
    /// Full channel name.
    pub name: String,
    /// Subscribed session keys; slots are stored by the sessions.
    pub subscribers: Slab<SessionKey>,
    /// Presence members by user id.
    pub members: HashMap<String, Member>,
    /// Last event, for cache channels.
    pub cache: Option<CachedEvent>,
    /// Cluster only, presence channels: the members of the whole cluster
    /// as this node has told its subscribers (`members` counts only local
    /// connections).
    pub view: Option<Box<PresenceView>>,
}

impl Channel {
    /// Vacant, and its cached event (if any) is older than the TTL.
    fn expired(&self, cache_ttl: std::time::Duration) -> bool {
        self.subscribers.is_empty()
            && self.cache.as_ref().is_none_or(|e| e.at.elapsed() >= cache_ttl)
            && self.view.as_ref().is_none_or(|v| v.pending.is_empty())
    }
}

/// A presence member as the cluster registry keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewMember {
    /// `user_info`.
    pub info: serde_json::Value,
    /// The user id was a JSON number.
    pub numeric: bool,
    /// Pushi: joined with `"peer": true`.
    pub peer: bool,
}

/// A presence join sent to the cluster registry and not yet answered.
#[derive(Debug, Clone)]
pub struct PendingJoin {
    /// The joining session.
    pub session: SessionKey,
    /// Its socket id.
    pub socket_id: String,
    /// The user it joins as.
    pub user_id: String,
    /// Its member record.
    pub member: ViewMember,
}

/// Cluster only: one node's view of a presence channel's members
/// cluster-wide, kept by the registry's snapshots and its numbered member
/// events (`seq`; an event at or below the view's seq is already in it).
#[derive(Debug, Default)]
pub struct PresenceView {
    /// Sequence number of the last member change applied.
    pub seq: u64,
    /// A snapshot has been applied (before it, member events are buffered).
    pub synced: bool,
    /// Members by user id.
    pub members: HashMap<String, ViewMember>,
    /// Member events that came before the first snapshot: (seq, user, added member).
    pub buffered: Vec<(u64, String, Option<ViewMember>)>,
    /// Joins waiting for the registry.
    pub pending: Vec<PendingJoin>,
    /// Being repaired (the registry is filled again by every node): snapshots
    /// only add members until the full re-read, so nobody flickers out.
    pub repairing: bool,
}

/// Why a session is on a channel; a subscription ends when no reason is left.
pub mod source {
    /// The client subscribed (`pusher:subscribe`).
    pub const DIRECT: u8 = 1;
    /// Through its `personal-<user_id>` subscription (an alias channel).
    pub const PERSONAL: u8 = 2;
    /// A peer pair channel created by a presence channel.
    pub const PEER: u8 = 4;
}

/// One subscription of a session.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Channel key.
    pub channel: ChannelKey,
    /// Slot of this session in the channel's subscriber slab.
    pub slot: u32,
    /// The user id this connection joined a presence channel as.
    pub user_id: Option<String>,
    /// Bits of [`source`]: why the session is on the channel.
    pub sources: u8,
    /// Presence only: joined with `"peer": true` (gets pair channels).
    pub peer: bool,
    /// Presence only: `user_id` was a JSON number (sent back as one).
    pub user_numeric: bool,
}

impl Subscription {
    /// A subscription for these reasons.
    pub fn new(channel: ChannelKey, slot: u32, user_id: Option<String>, sources: u8) -> Subscription {
        Subscription { channel, slot, user_id, sources, peer: false, user_numeric: false }
    }
}

/// A signed-in user (`pusher:signin`).
#[derive(Debug, Clone)]
pub struct SignedInUser {
    /// User id from user_data.
    pub id: String,
    /// The user_data JSON as signed.
    pub data: String,
}

/// A WebSocket speaking the Pusher protocol.
#[derive(Debug)]
pub struct Session {
    /// The connection it lives on.
    pub conn: ConnId,
    /// The app it connected to.
    pub app: AppIndex,
    /// `<digits>.<digits>`, what clients and SDKs call it.
    pub socket_id: String,
    /// Current subscriptions.
    pub subs: Vec<Subscription>,
    /// Set by a successful `pusher:signin`.
    pub user: Option<SignedInUser>,
    /// User ids whose online/offline changes this session is told about.
    pub watchlist: Vec<String>,
    /// Start (whole second) of the current client-event rate window.
    pub client_window: u64,
    /// Client events sent in that window.
    pub client_count: u32,
    /// Connected through Pushi's `/<app_key>` URL: gets Pushi's extra replies.
    pub pushi: bool,
    /// Users whose `personal-<user_id>` channel this session is subscribed to.
    pub personal: Vec<String>,
    /// Cluster: counted against its app's connection quota in the registry
    /// (released when it closes).
    pub quota: bool,
}

impl Session {
    /// The subscription to a channel key, if any.
    pub fn subscription(&self, channel: ChannelKey) -> Option<&Subscription> {
        self.subs.iter().find(|s| s.channel == channel)
    }
}

/// Every channel of every app.
#[derive(Debug, Default)]
pub struct Channels {
    table: Slab<Channel>,
    index: HashMap<(AppIndex, String), ChannelKey>,
    /// Channels holding a cached event, per app (for the per-app cap).
    cached: HashMap<AppIndex, usize>,
    /// Where the incremental sweep goes on next time.
    cursor: usize,
    /// Cluster only: channels whose local subscriber count changed since
    /// [`Channels::take_touched`] (their occupancy goes to the registry).
    touched: Option<HashSet<(AppIndex, String)>>,
}

/// What leaving a channel changed, for events and webhooks.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Left {
    /// The user whose last connection left (presence).
    pub member_removed: Option<String>,
    /// The channel has no subscribers any more.
    pub vacated: bool,
}

impl Channels {
    /// The key of an existing channel.
    pub fn find(&self, app: AppIndex, name: &str) -> Option<ChannelKey> {
        self.index.get(&(app, name.to_string())).copied()
    }

    /// The channel at a key (None for a stale key).
    pub fn get(&self, key: ChannelKey) -> Option<&Channel> {
        self.table.get(key.0 as usize)
    }

    /// Mutable access to the channel at a key (None for a stale key).
    pub fn get_mut(&mut self, key: ChannelKey) -> Option<&mut Channel> {
        self.table.get_mut(key.0 as usize)
    }

    /// The name of the channel at a key ("" for a stale key).
    pub fn name(&self, key: ChannelKey) -> &str {
        self.get(key).map_or("", |c| c.name.as_str())
    }

    /// The key of a channel, creating it if needed.
    pub fn find_or_create(&mut self, app: AppIndex, name: &str) -> ChannelKey {
        if let Some(key) = self.find(app, name) {
            return key;
        }
        let key = self.table.insert(Channel {
            app,
            name: name.to_string(),
            subscribers: Slab::new(),
            members: HashMap::new(),
            cache: None,
            view: None,
        });
        let key = ChannelKey(key as u32);
        self.index.insert((app, name.to_string()), key);
        key
    }

    /// Occupied channels of an app (with at least one subscriber).
    pub fn occupied(&self, app: AppIndex) -> impl Iterator<Item = &Channel> {
        self.table.iter().map(|(_, c)| c).filter(move |c| c.app == app && !c.subscribers.is_empty())
    }

    /// Adds a session to a channel; returns its slot and whether the user
    /// (presence) joined for the first time.
    /// A stale key joins nothing (slot `u32::MAX`).
    pub fn join(
        &mut self,
        key: ChannelKey,
        session: SessionKey,
        member: Option<(&str, serde_json::Value)>,
    ) -> (u32, bool) {
        let Some(channel) = self.table.get_mut(key.0 as usize) else { return (u32::MAX, false) };
        let slot = channel.subscribers.insert(session) as u32;
        if let Some(touched) = &mut self.touched {
            touched.insert((channel.app, channel.name.clone()));
        }
        let mut first = false;
        if let Some((user_id, info)) = member {
            let m = channel.members.entry(user_id.to_string()).or_insert_with(|| {
                first = true;
                Member { connections: 0, info, numeric: false }
            });
            m.connections += 1;
        }
        (slot, first)
    }

    /// Removes a subscription; frees the channel when nothing keeps it.
    pub fn leave(&mut self, sub: &Subscription, cache_ttl: std::time::Duration) -> Left {
        let Some(channel) = self.table.get_mut(sub.channel.0 as usize) else { return Left::default() };
        channel.subscribers.try_remove(sub.slot as usize);
        if let Some(touched) = &mut self.touched {
            touched.insert((channel.app, channel.name.clone()));
        }
        let mut left = Left::default();
        if let Some(user_id) = &sub.user_id {
            if let Some(m) = channel.members.get_mut(user_id) {
                m.connections -= 1;
                if m.connections == 0 {
                    channel.members.remove(user_id);
                    left.member_removed = Some(user_id.clone());
                }
            }
        }
        if channel.subscribers.is_empty() {
            left.vacated = true;
            let cache_alive = channel.cache.as_ref().is_some_and(|c| c.at.elapsed() < cache_ttl);
            let joining = channel.view.as_ref().is_some_and(|v| !v.pending.is_empty());
            if !joining {
                channel.view = None;
            }
            if !cache_alive && !joining {
                self.remove(sub.channel.0 as usize);
            } else {
                channel.subscribers = Slab::new(); // release the slab's memory
            }
        }
        left
    }

    /// Stores a channel's last event (cache channels), counting it against
    /// its app's cached channels.
    pub fn set_cache(&mut self, key: ChannelKey, event: CachedEvent) {
        let Some(channel) = self.table.get_mut(key.0 as usize) else { return };
        if channel.cache.is_none() {
            *self.cached.entry(channel.app).or_default() += 1;
        }
        channel.cache = Some(event);
    }

    /// Channels of an app holding a cached event.
    pub fn cached_count(&self, app: AppIndex) -> usize {
        self.cached.get(&app).copied().unwrap_or(0)
    }

    /// Frees a channel's slot, name and cache.
    fn remove(&mut self, key: usize) {
        let Some(c) = self.table.try_remove(key) else { return };
        self.index.remove(&(c.app, c.name));
        if c.cache.is_some() {
            if let Some(n) = self.cached.get_mut(&c.app) {
                *n -= 1;
                if *n == 0 {
                    self.cached.remove(&c.app);
                }
            }
        }
        // Give memory back after churn (the tables never shrink by themselves).
        if self.table.capacity() > 4096 && self.table.len() * 4 < self.table.capacity() {
            self.table.shrink_to_fit();
            self.index.shrink_to_fit();
        }
    }

    /// Drops every vacant channel whose cache has expired.
    pub fn sweep(&mut self, cache_ttl: std::time::Duration) {
        let dead: Vec<usize> = self.table.iter().filter(|(_, c)| c.expired(cache_ttl)).map(|(k, _)| k).collect();
        for k in dead {
            self.remove(k);
        }
    }

    /// Looks at up to `budget` slots from where the last call stopped and
    /// drops the vacant expired channels there: the whole table is visited
    /// over successive calls without any one call taking long.
    /// Returns how many channels it freed.
    pub fn sweep_some(&mut self, cache_ttl: std::time::Duration, budget: usize) -> usize {
        let end = self.table.capacity();
        let mut freed = 0;
        if end == 0 {
            return freed;
        }
        for _ in 0..budget.min(end) {
            if self.cursor >= self.table.capacity() {
                self.cursor = 0;
            }
            let k = self.cursor;
            self.cursor += 1;
            if self.table.get(k).is_some_and(|c| c.expired(cache_ttl)) {
                self.remove(k);
                freed += 1;
            }
        }
        freed
    }

    /// Cluster mode: from now on, remember which channels' subscriber counts change.
    pub fn track_occupancy(&mut self) {
        self.touched.get_or_insert_with(HashSet::new);
    }

    /// The channels whose subscriber counts changed since the last call.
    pub fn take_touched(&mut self) -> Vec<(AppIndex, String)> {
        match &mut self.touched {
            Some(t) if !t.is_empty() => t.drain().collect(),
            _ => Vec::new(),
        }
    }

    /// Every channel held (the cluster's re-synchronisation walks them).
    pub fn iter(&self) -> impl Iterator<Item = (ChannelKey, &Channel)> {
        self.table.iter().map(|(k, c)| (ChannelKey(k as u32), c))
    }

    /// Number of channels held (occupied or caching).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// No channels at all.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn kinds_from_prefixes() {
        assert_eq!(ChannelKind::of("news"), (ChannelKind::Public, false));
        assert_eq!(ChannelKind::of("cache-news"), (ChannelKind::Public, true));
        assert_eq!(ChannelKind::of("private-a"), (ChannelKind::Private, false));
        assert_eq!(ChannelKind::of("private-cache-a"), (ChannelKind::Private, true));
        assert_eq!(ChannelKind::of("private-encrypted-a"), (ChannelKind::PrivateEncrypted, false));
        assert_eq!(ChannelKind::of("private-encrypted-cache-a"), (ChannelKind::PrivateEncrypted, true));
        assert_eq!(ChannelKind::of("presence-cache-a"), (ChannelKind::Presence, true));
        assert_eq!(ChannelKind::of("#server-to-user-7"), (ChannelKind::ServerToUser, false));
        assert_eq!(ChannelKind::of("personal-u1"), (ChannelKind::Personal, false));
        assert_eq!(ChannelKind::of("peer-chat:a&b"), (ChannelKind::Peer, false));
    }

    #[test]
    fn names() {
        assert!(valid_channel_name("private-a_b-c=d@e,f.g;h"));
        assert!(valid_channel_name("#server-to-user-42"));
        assert!(!valid_channel_name(""));
        assert!(!valid_channel_name("#other"));
        assert!(!valid_channel_name("a b"));
        assert!(!valid_channel_name(&"a".repeat(201)));
        assert!(valid_event_name("App\\Events\\Sent"));
        assert!(!valid_event_name("a\nb"));
    }

    #[test]
    fn presence_counts_users_across_connections() {
        let mut ch = Channels::default();
        let key = ch.find_or_create(AppIndex(0), "presence-room");
        let (s1, first1) = ch.join(key, SessionKey(1), Some(("u", serde_json::json!({"n": 1}))));
        let (s2, first2) = ch.join(key, SessionKey(2), Some(("u", serde_json::json!({"n": 2}))));
        assert!(first1 && !first2);
        assert_eq!(ch.get(key).unwrap().members["u"].info, serde_json::json!({"n": 1}));
        let sub = |slot| Subscription::new(key, slot, Some("u".into()), source::DIRECT);
        assert_eq!(ch.leave(&sub(s1), Duration::ZERO), Left { member_removed: None, vacated: false });
        assert_eq!(ch.leave(&sub(s2), Duration::ZERO), Left { member_removed: Some("u".into()), vacated: true });
        assert!(ch.is_empty() && ch.find(AppIndex(0), "presence-room").is_none());
    }

    #[test]
    fn vacant_cache_channel_lives_until_its_ttl() {
        let mut ch = Channels::default();
        let key = ch.find_or_create(AppIndex(0), "cache-a");
        ch.set_cache(key, CachedEvent { message: "{}".into(), at: Instant::now() });
        assert_eq!(ch.cached_count(AppIndex(0)), 1);
        let (slot, _) = ch.join(key, SessionKey(1), None);
        ch.leave(&Subscription::new(key, slot, None, source::DIRECT), Duration::from_secs(60));
        assert_eq!(ch.find(AppIndex(0), "cache-a"), Some(key));
        ch.sweep(Duration::ZERO);
        assert!(ch.is_empty());
        assert_eq!(ch.cached_count(AppIndex(0)), 0);
    }

    #[test]
    fn incremental_sweep_frees_churned_cache_channels_and_memory() {
        let mut ch = Channels::default();
        // (A slab cannot shrink past a live slot: the long-lived channel came first.)
        let occupied = ch.find_or_create(AppIndex(1), "cache-kept");
        ch.join(occupied, SessionKey(7), None);
        for i in 0..10_000 {
            let key = ch.find_or_create(AppIndex(1), &format!("cache-{i}"));
            ch.set_cache(key, CachedEvent { message: "{}".into(), at: Instant::now() });
        }
        assert_eq!(ch.cached_count(AppIndex(1)), 10_000);
        // Each call looks at a bounded number of slots; enough calls cover the table.
        for _ in 0..100 {
            ch.sweep_some(Duration::ZERO, 128);
        }
        assert_eq!(ch.len(), 1, "only the occupied channel stays");
        assert_eq!(ch.cached_count(AppIndex(1)), 0);
        assert!(ch.table.capacity() < 4096, "the table gave its memory back");
        assert_eq!(ch.find(AppIndex(1), "cache-kept"), Some(occupied));
    }
}
