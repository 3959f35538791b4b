#![no_main]
//! cargo fuzz run ws_frame — see fuzz/run.sh.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pushi::fuzzing::ws_frames(data));
