//! Small leaf helpers every layer may use: hashing, MACs and constant-time
//! comparison, the one source of randomness, percent-decoding, token buckets
//! for rate limits, and handing freed memory back to the OS. Imports nothing
//! from the crate.

pub mod crypto;
pub mod memory;
pub mod percent;
pub mod rand;
pub mod rate;
