//! The test suite every store backend must pass, through the public
//! [`Backend`] API only: `tests/store.rs` runs it against SQLite and MongoDB,
//! and the library's unit tests include this file (`store::suite`) for SQLite.
//! The includer provides the store types in its scope (`super::`).

use super::{App, Backend, EventRecord, EventWrite, Retention, SubscriptionRecord, TargetRecord};

fn event(seq: i64, app: &str, channel: &str, mid: &str) -> EventWrite {
    EventWrite {
        event: EventRecord {
            seq,
            app: app.into(),
            mid: mid.into(),
            channel: channel.into(),
            owner_id: None,
            timestamp: 1_700_000_000.0 + seq as f64,
            data: serde_json::json!({ "channel": channel, "event": "message", "data": format!("m{seq}") }),
        },
        users: Vec::new(),
        retention: Retention::default(),
    }
}

/// Runs every check against a fresh, empty backend; panics on the first failure.
/// `app` must be unique per run when the backend is shared between runs.
pub fn run(store: &mut dyn Backend, app: &str) {
    store.ping().expect("ping");

    // Apps: insert, replace, list.
    let mut a = App::new(app, &format!("{app}-key"), &format!("{app}-secret"), "suite");
    store.put_app(&a).expect("put app");
    a.name = "renamed".into();
    a.client_events = false;
    store.put_app(&a).expect("replace app");
    let apps = store.load_apps().expect("load apps");
    let mine: Vec<&App> = apps.iter().filter(|x| x.id == app).collect();
    assert_eq!(mine.len(), 1, "one app per id");
    assert_eq!(mine[0], &a, "app round-trips");

    // Events: batch insert, idempotent retry, newest-first pages, per channel.
    let base = store.max_seq().expect("max seq");
    let mut e1 = event(base + 1, app, "news", &format!("{app}-m1"));
    e1.users = vec!["alice".into(), "bob".into()];
    let e2 = event(base + 2, app, "other", &format!("{app}-m2"));
    let mut e3 = event(base + 3, app, "news", &format!("{app}-m3"));
    e3.users = vec!["alice".into()];
    e3.event.owner_id = Some("1.2".into());
    store.insert_events(&[e1.clone(), e2.clone()]).expect("insert");
    store.insert_events(&[e3.clone(), e1.clone()]).expect("insert again (retry)");
    assert_eq!(store.max_seq().unwrap(), base + 3);
    let all = store.channel_events(app, None, 0, 10).unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![base + 3, base + 2, base + 1]);
    assert_eq!(all[0], e3.event, "event round-trips");
    let news = store.channel_events(app, Some("news"), 0, 10).unwrap();
    assert_eq!(news.iter().map(|e| e.mid.as_str()).collect::<Vec<_>>(), [&e3.event.mid, &e1.event.mid]);
    let page = store.channel_events(app, Some("news"), 1, 1).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].mid, e1.event.mid);
    assert!(store.channel_events(app, Some("none"), 0, 10).unwrap().is_empty());
    assert!(store.channel_events(&format!("{app}-other"), None, 0, 10).unwrap().is_empty(), "scoped by app");

    // Personal history through associations.
    let alice = store.user_events(app, "alice", 0, 10).unwrap();
    assert_eq!(alice.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![base + 3, base + 1]);
    let bob = store.user_events(app, "bob", 0, 10).unwrap();
    assert_eq!(bob.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![base + 1], "no duplicate association");
    assert_eq!(store.user_events(app, "alice", 1, 5).unwrap().len(), 1);
    assert!(store.user_events(app, "carol", 0, 10).unwrap().is_empty());

    // Subscriptions: idempotent add, filters, remove.
    let sub = |user: &str, event: &str| SubscriptionRecord {
        app: app.into(),
        user_id: user.into(),
        event: event.into(),
        created: 1_700_000_000,
    };
    let (s1, created) = store.add_subscription(&sub("alice", "news")).unwrap();
    assert!(created);
    assert_eq!(s1, sub("alice", "news"));
    let (_, created) = store.add_subscription(&sub("alice", "news")).unwrap();
    assert!(!created, "duplicate subscription is not created twice");
    store.add_subscription(&sub("alice", "sport")).unwrap();
    store.add_subscription(&sub("bob", "news")).unwrap();
    assert_eq!(store.subscriptions(app, None, None).unwrap().len(), 3);
    assert_eq!(store.subscriptions(app, Some("alice"), None).unwrap().len(), 2);
    assert_eq!(store.subscriptions(app, None, Some("news")).unwrap().len(), 2);
    assert_eq!(store.subscriptions(app, Some("bob"), Some("news")).unwrap(), vec![sub("bob", "news")]);
    assert!(store.all_subscriptions().unwrap().iter().filter(|s| s.app == app).count() == 3);
    assert_eq!(store.remove_subscription(app, "alice", "sport").unwrap(), Some(sub("alice", "sport")));
    assert_eq!(store.remove_subscription(app, "alice", "sport").unwrap(), None);
    assert_eq!(store.subscriptions(app, Some("alice"), None).unwrap().len(), 1);

    // Targets.
    let target = |t: &str, event: &str| TargetRecord {
        app: app.into(),
        kind: "web".into(),
        target: t.into(),
        event: event.into(),
        extra: serde_json::json!({}),
        created: 1_700_000_000,
    };
    let (_, created) = store.add_target(&target("http://a/", "news")).unwrap();
    assert!(created);
    let (_, created) = store.add_target(&target("http://a/", "news")).unwrap();
    assert!(!created);
    store.add_target(&target("http://a/", "sport")).unwrap();
    let mut push = target("https://push/1", "news");
    push.kind = "web_push".into();
    push.extra = serde_json::json!({ "p256dh": "k", "auth": "a" });
    store.add_target(&push).unwrap();
    assert_eq!(store.targets(app, "web", None, None).unwrap().len(), 2);
    assert_eq!(store.targets(app, "web", Some("http://a/"), Some("news")).unwrap().len(), 1);
    assert_eq!(store.targets(app, "web_push", None, None).unwrap(), vec![push.clone()]);
    assert!(store.all_targets().unwrap().iter().filter(|t| t.app == app).count() == 3);
    assert_eq!(store.remove_targets(app, "web", "http://a/", Some("sport")).unwrap().len(), 1);
    store.add_target(&target("http://a/", "sport")).unwrap();
    assert_eq!(store.remove_targets(app, "web", "http://a/", None).unwrap().len(), 2);
    assert!(store.targets(app, "web", None, None).unwrap().is_empty());
    assert_eq!(store.targets(app, "web_push", None, None).unwrap().len(), 1, "other kinds untouched");

    // Retention: by count (the newest stay), then by age; associations follow.
    let base = store.max_seq().unwrap();
    let batch: Vec<EventWrite> = (1..=5)
        .map(|i| {
            let mut e = event(base + i, app, "news", &format!("{app}-r{i}"));
            e.users = vec!["dora".into()];
            e
        })
        .collect();
    store.insert_events(&batch).unwrap();
    let before = store.channel_events(app, None, 0, 100).unwrap().len() as u64;
    let pruned = store.prune_events(app, Retention { max_events: 4, max_age_secs: 0 }).unwrap();
    assert_eq!(pruned, before - 4, "pruned down to 4");
    let kept = store.channel_events(app, None, 0, 100).unwrap();
    assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), (base + 2..=base + 5).rev().collect::<Vec<_>>());
    assert_eq!(store.user_events(app, "dora", 0, 100).unwrap().len(), 4, "associations of pruned events go");
    // Suite timestamps are from 2023: an age limit of a day removes them all.
    store.prune_events(app, Retention { max_events: 100, max_age_secs: 24 * 3600 }).unwrap();
    assert!(store.channel_events(app, None, 0, 100).unwrap().is_empty(), "old events pruned");
    assert!(store.user_events(app, "dora", 0, 100).unwrap().is_empty());

    // Deleting an app removes it and its data only.
    store.insert_events(&[event(base + 10, app, "news", &format!("{app}-d1"))]).unwrap();
    store.delete_app(app).unwrap();
    assert!(store.load_apps().unwrap().iter().all(|x| x.id != app), "app deleted");
    assert!(store.channel_events(app, None, 0, 10).unwrap().is_empty());
    assert!(store.subscriptions(app, None, None).unwrap().is_empty());
    assert!(store.targets(app, "web_push", None, None).unwrap().is_empty());
}
