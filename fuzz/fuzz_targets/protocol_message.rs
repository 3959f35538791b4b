#![no_main]
//! cargo fuzz run protocol_message — see fuzz/run.sh.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pushi::fuzzing::protocol_messages(data));
