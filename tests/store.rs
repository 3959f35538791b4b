//! Both store backends against the same suite (`tests/store_suite/`): the
//! embedded SQLite store in a temporary directory, and MongoDB at
//! `PUSHI_TEST_MONGO_URL` (tests/run.sh starts nx-27017 and sets it; without
//! it the MongoDB tests print that they are skipped).

use std::io::Write;
use std::time::{Duration, Instant};

mod store_suite;

use pushi::apps::App;
use pushi::store::{
    Backend, EventRecord, EventWrite, OpenBackend, Retention, StoreConfig, SubscriptionRecord, TargetRecord,
};
use store_suite as suite;

/// Unique per run, so runs sharing one MongoDB database never collide.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn mongo() -> Option<Box<dyn Backend>> {
    match std::env::var("PUSHI_TEST_MONGO_URL") {
        Ok(url) if !url.is_empty() => Some(StoreConfig::Mongo(url).open().expect("open MongoDB store")),
        _ => {
            // Straight to stderr, past the test harness's capture: visible in every run.
            let _ = writeln!(std::io::stderr(), "skipped: PUSHI_TEST_MONGO_URL unset");
            None
        }
    }
}

#[test]
fn sqlite_passes_the_store_suite() {
    let dir = std::env::temp_dir().join(unique("pushi-store"));
    let mut store = StoreConfig::Embedded(dir.clone()).open().unwrap();
    suite::run(store.as_mut(), "suite-app");
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mongo_passes_the_store_suite() {
    let Some(mut store) = mongo() else { return };
    let started = Instant::now();
    suite::run(store.as_mut(), &unique("suite"));
    println!("MongoDB suite passed in {:?}", started.elapsed());
}

#[test]
fn mongo_round_trips_json_values_and_keeps_seq_across_connections() {
    let Some(mut store) = mongo() else { return };
    let app = unique("json");
    let seq = store.max_seq().unwrap() + 1;
    let event = EventRecord {
        seq,
        app: app.clone(),
        mid: format!("{app}-m"),
        channel: "c".into(),
        owner_id: Some("7.9".into()),
        timestamp: 1_700_000_000.25,
        data: serde_json::json!({
            "small": 1, "negative": -2, "big": 9_007_199_254_740_993i64, "float": 0.5, "integral_float": 2.0,
            "bool": true, "null": null, "nested": {"list": [1, "two", 3.5, {"$key": "dollar"}]}, "unicode": "é✓"
        }),
    };
    // Stored out of seq order: history must sort on seq, not insertion order.
    let mut later = event.clone();
    later.seq = seq + 1;
    later.mid = format!("{app}-later");
    later.data = serde_json::json!({});
    let write =
        |e: &EventRecord| EventWrite { event: e.clone(), users: vec!["u".into()], retention: Default::default() };
    store.insert_events(&[write(&later), write(&event)]).unwrap();
    assert_eq!(store.channel_events(&app, None, 0, 10).unwrap(), vec![later.clone(), event.clone()]);
    assert_eq!(store.user_events(&app, "u", 0, 10).unwrap(), vec![later, event]);
    assert!(store.channel_events(&app, None, 0, 0).unwrap().is_empty(), "count 0 is an empty page");
    let mut other = mongo().unwrap();
    assert!(other.max_seq().unwrap() > seq, "a second connection sees the stored seq");
}

#[test]
fn mongo_unreachable_fails_fast() {
    // A loopback port just released: connection refused; must not hang a worker.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    let url = format!("mongodb://127.0.0.1:{port}/pushi_test");
    let result = StoreConfig::Mongo(url).open().and_then(|mut s| s.ping());
    let elapsed = started.elapsed();
    assert!(result.is_err(), "no server, yet the store opened and answered");
    assert!(elapsed < Duration::from_secs(8), "failing took {elapsed:?}");
    println!("unreachable MongoDB failed in {elapsed:?}: {}", result.err().unwrap());
}
