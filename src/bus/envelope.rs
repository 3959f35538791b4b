//! The bus's wire format: one [`BusMessage`] per Redis (or NATS) message,
//! binary and length-prefixed, so a receiving node takes the client frame
//! text as it is and fans it out without parsing JSON.
//!
//! `b"PB" | version u8 | kind u8 | origin node u64 | app id | field | field | field`,
//! each field a `u32` big-endian length and its bytes (an absent optional
//! field has length `u32::MAX`). Apps travel by id: slots differ per node.
//! Unknown versions and kinds decode to None (ignored), so nodes of two
//! versions can share a bus during a rolling upgrade.

use crate::apps::AppIndex;
use crate::ports::BusMessage;

const MAGIC: &[u8; 2] = b"PB";
const VERSION: u8 = 1;
const CHANNEL_EVENT: u8 = 1;
const USER_EVENT: u8 = 2;
const TERMINATE: u8 = 3;
const CACHED_CHANNEL_EVENT: u8 = 4;
const ALIAS_ADDED: u8 = 5;
const ALIAS_REMOVED: u8 = 6;
const ABSENT: u32 = u32::MAX;

/// Encodes a message from node `origin` for app `app_id`.
pub fn encode(origin: u64, app_id: &str, message: &BusMessage) -> Vec<u8> {
    let (kind, fields): (u8, [Option<&str>; 3]) = match message {
        BusMessage::ChannelEvent { channel, message, except, cache, .. } => {
            let kind = if *cache { CACHED_CHANNEL_EVENT } else { CHANNEL_EVENT };
            (kind, [Some(channel), Some(message), except.as_deref()])
        }
        BusMessage::UserEvent { user_id, message, .. } => (USER_EVENT, [Some(user_id), Some(message), None]),
        BusMessage::Terminate { user_id, .. } => (TERMINATE, [Some(user_id), None, None]),
        BusMessage::AliasChanged { user_id, channel, added, .. } => {
            (if *added { ALIAS_ADDED } else { ALIAS_REMOVED }, [Some(user_id), Some(channel), None])
        }
        // Published by the registry's scripts, never by a node: encoded as an ignored kind.
        BusMessage::Member { .. } | BusMessage::UserPresence { .. } | BusMessage::SubscriptionCount { .. } => {
            (0, [None, None, None])
        }
    };
    let size = 12 + 4 + app_id.len() + fields.iter().map(|f| 4 + f.map_or(0, str::len)).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&origin.to_be_bytes());
    put(&mut out, Some(app_id));
    for f in fields {
        put(&mut out, f);
    }
    out
}

fn put(out: &mut Vec<u8>, field: Option<&str>) {
    match field {
        Some(s) => {
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        None => out.extend_from_slice(&ABSENT.to_be_bytes()),
    }
}

/// A decoded envelope: who sent it, for which app (by id), and the message
/// once the receiver has found the app's slot.
#[derive(Debug, PartialEq)]
pub struct Received {
    /// The sending node.
    pub origin: u64,
    /// The app's id.
    pub app_id: String,
    kind: u8,
    fields: [Option<String>; 3],
}

impl Received {
    /// The message for the receiver's slot of the app; None when malformed.
    pub fn into_message(self, app: AppIndex) -> Option<BusMessage> {
        let [a, b, c] = self.fields;
        Some(match self.kind {
            CHANNEL_EVENT | CACHED_CHANNEL_EVENT => BusMessage::ChannelEvent {
                app,
                channel: a?,
                message: b?,
                except: c,
                cache: self.kind == CACHED_CHANNEL_EVENT,
            },
            USER_EVENT => BusMessage::UserEvent { app, user_id: a?, message: b? },
            TERMINATE => BusMessage::Terminate { app, user_id: a? },
            ALIAS_ADDED | ALIAS_REMOVED => {
                BusMessage::AliasChanged { app, user_id: a?, channel: b?, added: self.kind == ALIAS_ADDED }
            }
            _ => return None,
        })
    }
}

/// Decodes an envelope; None for another version, an unknown kind or bad bytes.
pub fn decode(bytes: &[u8]) -> Option<Received> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (&version, rest) = rest.split_first()?;
    let (&kind, rest) = rest.split_first()?;
    if version != VERSION || !(CHANNEL_EVENT..=ALIAS_REMOVED).contains(&kind) {
        return None;
    }
    let (origin, mut rest) = rest.split_at_checked(8)?;
    let origin = u64::from_be_bytes(origin.try_into().ok()?);
    let mut take = || -> Option<Option<String>> {
        let (len, tail) = rest.split_at_checked(4)?;
        let len = u32::from_be_bytes(len.try_into().ok()?);
        if len == ABSENT {
            rest = tail;
            return Some(None);
        }
        let (text, tail) = tail.split_at_checked(len as usize)?;
        rest = tail;
        Some(Some(String::from_utf8(text.to_vec()).ok()?))
    };
    let app_id = take()??;
    let fields = [take()?, take()?, take()?];
    Some(Received { origin, app_id, kind, fields })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: BusMessage) {
        let bytes = encode(7, "app-1", &m);
        let r = decode(&bytes).expect("decodes");
        assert_eq!((r.origin, r.app_id.as_str()), (7, "app-1"));
        assert_eq!(r.into_message(AppIndex(3)), Some(m));
    }

    #[test]
    fn every_message_survives_the_wire() {
        let app = AppIndex(3);
        round_trip(BusMessage::ChannelEvent {
            app,
            channel: "news".into(),
            message: r#"{"event":"e","channel":"news","data":"ü"}"#.into(),
            except: Some("1.2".into()),
            cache: false,
        });
        let (channel, message) = ("cache-c".into(), String::new());
        round_trip(BusMessage::ChannelEvent { app, channel, message, except: None, cache: true });
        round_trip(BusMessage::UserEvent { app, user_id: "u1".into(), message: "{}".into() });
        round_trip(BusMessage::Terminate { app, user_id: "u1".into() });
        for added in [true, false] {
            round_trip(BusMessage::AliasChanged { app, user_id: "u1".into(), channel: "news".into(), added });
        }
    }

    #[test]
    fn garbage_other_versions_and_truncations_are_ignored() {
        let m = BusMessage::Terminate { app: AppIndex(0), user_id: "u".into() };
        let bytes = encode(1, "a", &m);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_none(), "truncated at {cut}");
        }
        let mut other = bytes.clone();
        other[2] = 9;
        assert!(decode(&other).is_none());
        let mut kind = bytes.clone();
        kind[3] = 42;
        assert!(decode(&kind).is_none());
        assert!(decode(b"not an envelope at all").is_none());
        let mut huge = bytes;
        huge[16..20].copy_from_slice(&(u32::MAX - 1).to_be_bytes());
        assert!(decode(&huge).is_none());
    }
}
