//! The background maintenance loop of the ingest process, one per table.
//!
//! Every `interval` the loop looks at the table and, partition by partition:
//! Z-orders partitions that stopped receiving data (no new file for
//! `zorder_idle`) or whose unordered bytes passed `zorder_unordered_bytes`,
//! when the table names `zorder_by` columns; otherwise compacts partitions
//! with at least `compact_min_small_files` small files. Once per
//! `vacuum_interval` it vacuums the table and expires old log files (commits
//! checkpoint themselves every 10 versions). Each job runs under a fleet-wide
//! lease named after the table, job and partition, so one worker does it; it
//! runs on its own task and commits with `dataChange=false`, so ingestion
//! never waits for it; on shutdown the job in flight is dropped before it
//! commits (its files become orphans for vacuum).

use std::time::Instant;

use deltalake::DeltaTable;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::compact::{compact, CompactOptions};
use super::files::{live_files_by_partition, partition_label, LiveFile, PartitionKey};
use super::vacuum::{vacuum, VacuumOptions};
use super::zorder::{select, zorder, ZOrderOptions};
use super::MaintainError;
use crate::config::MaintenanceConfig;
use crate::fleet::lease::{system_clock, Leases};

/// What one round of the loop did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Partitions compacted.
    pub compacted: u64,
    /// Partitions Z-ordered.
    pub zordered: u64,
    /// Whether the table was vacuumed.
    pub vacuumed: bool,
    /// Jobs skipped because another worker held their lease.
    pub skipped_by_lease: u64,
}

/// The maintenance loop of one table.
pub struct MaintenanceLoop {
    name: String,
    url: Url,
    storage_options: std::collections::BTreeMap<String, String>,
    config: MaintenanceConfig,
    zorder_by: Vec<String>,
    leases: Leases,
    last_vacuum: Option<Instant>,
    /// Whether the table passed `check --for bigquery` last round.
    bigquery_ok: Option<bool>,
}

impl MaintenanceLoop {
    /// A loop for the table `name` at `url`, holding leases as `worker`.
    pub async fn new(
        name: &str,
        url: Url,
        storage_options: std::collections::BTreeMap<String, String>,
        config: MaintenanceConfig,
        zorder_by: Vec<String>,
        worker: &str,
    ) -> Result<Self, MaintainError> {
        let table = crate::table::open(&url, &storage_options)
            .await
            .map_err(|e| MaintainError::Invalid(e.to_string()))?;
        let leases = Leases::new(
            table.object_store(),
            object_store::path::Path::from("_sluice_leases"),
            config.lease_ttl.0,
            worker,
            system_clock(),
        );
        Ok(Self {
            name: name.to_string(),
            url,
            storage_options,
            config,
            zorder_by,
            leases,
            last_vacuum: None,
            bigquery_ok: None,
        })
    }

    /// Runs rounds every `interval` until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.interval.0) => {}
                _ = shutdown.cancelled() => return,
            }
            let started = Instant::now();
            let round = tokio::select! {
                round = self.round() => round,
                _ = shutdown.cancelled() => {
                    tracing::info!(table = %self.name, "maintenance stopped for shutdown");
                    return;
                }
            };
            crate::telemetry::metrics::record_run(
                "maintenance",
                &self.name,
                round.is_ok(),
                started.elapsed(),
            );
            match round {
                Ok(report) if report != RoundReport::default() => {
                    tracing::info!(table = %self.name, ?report, "maintenance round done");
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(table = %self.name, %error, "maintenance round failed")
                }
            }
        }
    }

    /// One round over every partition.
    pub async fn round(&mut self) -> Result<RoundReport, MaintainError> {
        let mut report = RoundReport::default();
        let mut table = self.open().await?;
        self.watch_bigquery(&table).await;
        let groups = live_files_by_partition(&table, &[])?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        for (partition, files) in groups {
            let Some(filter) = as_filter(&partition) else {
                continue;
            };
            let job = self.job_for(&files, now_ms);
            let Some(job) = job else { continue };
            let lease_name = format!(
                "{}/{}/{}",
                self.name,
                job.name(),
                partition_label(&partition)
            );
            let Some(lease) = self
                .leases
                .try_acquire(&lease_name)
                .await
                .map_err(|e| MaintainError::Invalid(e.to_string()))?
            else {
                report.skipped_by_lease += 1;
                continue;
            };
            let result = match job {
                Job::ZOrder => {
                    let options = ZOrderOptions {
                        columns: self.zorder_by.clone(),
                        target_size: self.config.compact_target_size.0,
                        memory_budget: self.config.zorder_memory_budget.as_usize(),
                        partition_filter: filter,
                        ..ZOrderOptions::default()
                    };
                    self.leases
                        .hold_while(lease, zorder(&mut table, &options, &|_| {}))
                        .await
                        .map_err(lost)?
                        .map(|m| m.partitions > 0)
                }
                Job::Compact => {
                    let options = CompactOptions {
                        target_size: self.config.compact_target_size.0,
                        min_file_size: self.config.small_file_size.0,
                        partition_filter: filter,
                        key_column: None,
                    };
                    self.leases
                        .hold_while(lease, compact(&mut table, &options, &|_| {}))
                        .await
                        .map_err(lost)?
                        .map(|m| m.bins_committed > 0)
                }
            };
            match (job, result?) {
                (Job::ZOrder, true) => report.zordered += 1,
                (Job::Compact, true) => report.compacted += 1,
                _ => {}
            }
        }
        if self
            .last_vacuum
            .is_none_or(|t| t.elapsed() >= self.config.vacuum_interval.0)
        {
            let name = format!("{}/vacuum", self.name);
            match self
                .leases
                .try_acquire(&name)
                .await
                .map_err(|e| MaintainError::Invalid(e.to_string()))?
            {
                Some(lease) => {
                    let options = VacuumOptions {
                        retention: self.config.vacuum_retention.0,
                        ..VacuumOptions::default()
                    };
                    let table = self.open().await?;
                    let (mut table, _) = self
                        .leases
                        .hold_while(lease, vacuum(table, &options))
                        .await
                        .map_err(lost)??;
                    let now = chrono::Utc::now().timestamp_millis();
                    super::checkpoint::checkpoint(&mut table, true, now).await?;
                    report.vacuumed = true;
                }
                None => report.skipped_by_lease += 1,
            }
            // Only once it ran (here or elsewhere in the fleet): a failed
            // vacuum is retried next round, not a whole interval later.
            self.last_vacuum = Some(Instant::now());
        }
        Ok(report)
    }

    /// `check --for bigquery` without reading footers: a warning when the
    /// table stops passing (e.g. too much JSON since the last checkpoint),
    /// a metric every round it fails, a line when it passes again.
    async fn watch_bigquery(&mut self, table: &DeltaTable) {
        let report = match crate::check::check(table, &[crate::check::Target::Bigquery], 0).await {
            Ok(report) => report,
            Err(error) => {
                tracing::debug!(table = %self.name, %error, "cannot check the table for BigQuery");
                return;
            }
        };
        let ok = !report.fails();
        if !ok {
            crate::telemetry::metrics::bigquery_check_failed(&self.name);
            if self.bigquery_ok != Some(false) {
                let errors: Vec<String> = report
                    .findings
                    .iter()
                    .filter(|f| f.severity == crate::check::Severity::Error)
                    .map(|f| format!("{}: {}", f.code, f.message))
                    .collect();
                tracing::warn!(table = %self.name, ?errors, "the table does not pass `sluice check --for bigquery` (BigQuery would fail to read it)");
            }
        } else if self.bigquery_ok == Some(false) {
            tracing::info!(table = %self.name, "the table passes `sluice check --for bigquery` again");
        }
        self.bigquery_ok = Some(ok);
    }

    async fn open(&self) -> Result<DeltaTable, MaintainError> {
        crate::table::open(&self.url, &self.storage_options)
            .await
            .map_err(|e| MaintainError::Invalid(e.to_string()))
    }

    fn job_for(&self, files: &[LiveFile], now_ms: i64) -> Option<Job> {
        if !self.zorder_by.is_empty() {
            let selection = select(files, &self.zorder_by.join(","), 4);
            let unordered: u64 = selection.unordered.iter().map(|f| f.size).sum();
            let newest = files.iter().map(|f| f.modified_ms).max().unwrap_or(0);
            let idle = now_ms - newest >= self.config.zorder_idle.0.as_millis() as i64;
            if !selection.unordered.is_empty()
                && (idle || unordered >= self.config.zorder_unordered_bytes.0)
            {
                return Some(Job::ZOrder);
            }
        }
        let small = files
            .iter()
            .filter(|f| f.size < self.config.small_file_size.0)
            .count();
        (small >= self.config.compact_min_small_files).then_some(Job::Compact)
    }
}

#[derive(Debug, Clone, Copy)]
enum Job {
    Compact,
    ZOrder,
}

impl Job {
    fn name(self) -> &'static str {
        match self {
            Job::Compact => "compact",
            Job::ZOrder => "zorder",
        }
    }
}

/// A partition key as a filter; `None` for partitions with null values.
/// A maintenance job stopped because its lease was lost.
fn lost(error: crate::fleet::lease::LeaseLost) -> MaintainError {
    MaintainError::Invalid(error.to_string())
}

fn as_filter(partition: &PartitionKey) -> Option<Vec<(String, String)>> {
    partition
        .iter()
        .map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
        .collect()
}

/// Starts the loop for one table in the background.
pub fn spawn(loop_: MaintenanceLoop, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(loop_.run(shutdown))
}
