//! Entry points for the cargo-fuzz targets under `fuzz/`, compiled only with
//! the `fuzzing` feature (the fuzz crate and this crate's own tests turn it
//! on), so `tests/fuzz_regressions.rs` replays saved inputs with the stable
//! toolchain and the shipped library does not carry them. Each feeds
//! arbitrary bytes to one layer the way the event loop does and must never panic.

use std::cell::RefCell;
use std::sync::Arc;

use crate::apps::{App, Apps};
use crate::config::Config;
use crate::http::{self, ParseLimits, Response};
use crate::metrics::Metrics;
use crate::net::{Service, WsRole, WsRoute};
use crate::outbox::{ConnId, Outbox, SharedFrame};
use crate::server::{Boot, Server};
use crate::store::pool::{Store, Wake};
use crate::store::StoreConfig;
use crate::ws::{frame, MessageReader};

/// Parses pipelined HTTP requests from the input until it is used up or an error.
pub fn http_requests(data: &[u8]) {
    let limits = ParseLimits { max_head: 16 * 1024, max_body: 64 * 1024 };
    let mut pos = 0;
    while pos < data.len() {
        match http::parse_request(&data[pos..], limits) {
            Ok(Some((req, used))) => {
                assert!(used > 0 && pos + used <= data.len());
                let _ = (req.path(), req.query(), req.keep_alive(), req.is_websocket_upgrade());
                let _ = http::query_pairs(req.query()).count();
                let _ = http::percent_decode(req.path());
                pos += used;
            }
            Ok(None) => {
                let _ = http::wants_continue(&data[pos..]);
                return;
            }
            Err(e) => {
                let _ = e.response().encode(false);
                return;
            }
        }
    }
}

/// Decodes frames and reassembles messages from the input (client to server).
pub fn ws_frames(data: &[u8]) {
    let mut buf = data.to_vec();
    let mut reader = MessageReader::default();
    let mut pos = 0;
    while pos < buf.len() {
        match frame::decode(&mut buf[pos..], 64 * 1024) {
            Ok(Some((f, used))) => {
                assert!(used > 0);
                pos += used;
                if reader.push(f, 256 * 1024).is_err() {
                    return;
                }
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// An outbox that keeps nothing (the protocol only has to not panic).
struct Discard;

impl Outbox for Discard {
    fn send(&mut self, _to: ConnId, _frame: &SharedFrame) -> bool {
        true
    }
    fn close(&mut self, _to: ConnId, _code: u16, _reason: &str) {}
    fn respond(&mut self, _to: ConnId, _response: Response) {}
}

struct NoWake;

impl Wake for NoWake {
    fn wake(&self) {}
}

thread_local! {
    static SERVER: RefCell<Server> = RefCell::new(fuzz_server());
}

fn fuzz_server() -> Server {
    let mut apps = Apps::default();
    apps.insert(App::new("1", "key", "secret", "fuzz")).expect("one app");
    let store = Store::start(StoreConfig::Memory, 1, 1000, Arc::new(NoWake));
    Server::new(Config::defaults(), apps, std::rc::Rc::new(Metrics::default()), store, Boot::default())
}

/// Feeds each line of the input as one text message to two sessions of one
/// app (alternating), then closes them: subscribe, presence, client events,
/// Pushi publishes, history and sign-in in any order.
pub fn protocol_messages(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    SERVER.with(|server| {
        let mut server = server.borrow_mut();
        let mut out = Discard;
        let server = &mut *server;
        let mut open = |key, pushi| {
            let route = WsRoute::Pusher { key: "key".into(), protocol: Some("7".into()), pushi };
            match server.ws_open(route, ConnId { key, gen: 1 }, &mut Discard) {
                WsRole::Session(s) => Some(s),
                _ => None,
            }
        };
        let (Some(a), Some(b)) = (open(1, false), open(2, true)) else { return };
        for (i, line) in text.lines().enumerate() {
            server.ws_text(if i % 2 == 0 { a } else { b }, line, &mut out);
        }
        server.on_wake(&mut out);
        server.ws_closed(a, &mut out);
        server.ws_closed(b, &mut out);
    });
}
