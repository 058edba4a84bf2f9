//! Coordination across a fleet of identical workers.

pub mod lease;
