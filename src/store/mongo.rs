//! MongoDB backend (placeholder until implemented).

use super::*;

/// Connects to a MongoDB URL.
pub fn open(_url: &str) -> StoreResult<Box<dyn Backend>> {
    Err(StoreError("MongoDB backend not built yet".into()))
}
