//! Integration tests, one module per capability.

mod avro;
mod common;
mod config_errors;
mod dead_letters;
mod erasure;
mod erasure_clock;
mod erasure_hashed;
mod evolution;
mod exactly_once;
mod fencing;
mod fleet;
mod format_files;
mod kinesis;
mod kinesis_trimmed;
mod layout;
mod maintenance;
mod memory;
mod protobuf;
mod protobuf_registry;
mod rebalance;
mod s3;
mod serve;
mod signals;
mod soak;
mod tansu;
mod zorder;
