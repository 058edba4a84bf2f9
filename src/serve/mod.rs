//! `sluice serve`: the long-running worker of a fleet. It runs every
//! configured pipeline with the maintenance and erasure loops (see
//! `ingest::run`), and answers HTTP on one port:
//!
//! - `/metrics`: Prometheus text format (see `telemetry::metrics`);
//! - `/healthz`: 200 while the process is alive;
//! - `/readyz`: 200 once every pipeline runs and while none has failed;
//!   503 from the moment a drain starts (SIGTERM/SIGINT), so traffic and
//!   rollouts move on before the worker commits what it holds and exits.

pub mod http;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::ingest::budget::MemoryBudget;
use crate::telemetry::metrics::{self, Gauges};
use crate::telemetry::stats::IngestStats;

/// What the HTTP endpoints read.
pub struct Probe {
    /// The worker's counters.
    pub stats: Arc<IngestStats>,
    /// The worker's buffer budget.
    pub budget: Arc<MemoryBudget>,
    /// Cancelled when the drain starts.
    pub draining: CancellationToken,
}

impl Probe {
    /// `Ok` when ready, else why not.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.draining.is_cancelled() {
            Err("draining")
        } else if !self.stats.healthy() {
            Err("not running: starting, or a pipeline failed")
        } else {
            Ok(())
        }
    }

    /// The Prometheus exposition.
    pub fn metrics(&self) -> String {
        metrics::render(
            &self.stats,
            &Gauges {
                buffered_bytes: self.budget.used() as u64,
                budget_bytes: self.budget.limit() as u64,
                ready: self.readiness().is_ok(),
                now_ms: chrono::Utc::now().timestamp_millis(),
            },
        )
    }
}
