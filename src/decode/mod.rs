//! Decoding raw records into Arrow batches in a table's schema (JSON today).

pub mod json;
pub mod timestamp;

pub use json::{Decoded, JsonDecoder};
