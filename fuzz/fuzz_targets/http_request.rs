#![no_main]
//! cargo fuzz run http_request — see fuzz/run.sh.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pushi::fuzzing::http_requests(data));
