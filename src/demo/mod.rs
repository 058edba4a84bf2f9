//! The embedded demo: an in-process Kafka broker and a ride-event generator.

pub mod broker;
pub mod encode;
pub mod events;
