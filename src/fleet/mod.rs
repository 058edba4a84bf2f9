//! Coordination across a fleet of identical workers.

pub mod identity;
pub mod lease;
