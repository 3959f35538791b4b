//! Replays every saved fuzz input (fuzz/regressions/<target>/) through the
//! same entry points the cargo-fuzz targets use, on the stable toolchain:
//! an input that once crashed a layer must never crash it again.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions").join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        run(&data);
        count += 1;
    }
    assert!(count > 0, "no inputs in {}", dir.display());
}

#[test]
fn http_request_inputs() {
    replay("http_request", pushi::fuzzing::http_requests);
}

#[test]
fn ws_frame_inputs() {
    replay("ws_frame", pushi::fuzzing::ws_frames);
}

#[test]
fn protocol_message_inputs() {
    replay("protocol_message", pushi::fuzzing::protocol_messages);
}
