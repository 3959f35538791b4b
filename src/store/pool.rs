//! Worker pool (placeholder).
