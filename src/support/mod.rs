//! Small leaf helpers every layer may use: the one source of randomness and
//! token buckets for rate limits, and handing freed memory back to the OS. Imports nothing from the crate.

pub mod memory;
pub mod rand;
pub mod rate;
