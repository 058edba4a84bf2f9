//! `sluice ingest --config FILE`: run the configured sources into their tables.

use std::path::PathBuf;
use std::sync::Arc;

use super::{shutdown_on_signals, CliError};
use crate::config::Config;
use crate::telemetry::stats::IngestStats;

/// Arguments of `sluice ingest`.
#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// The TOML config file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Validate the config and exit without touching any table.
    #[arg(long)]
    pub check: bool,
    /// This worker's stable id: its static membership in Kafka consumer
    /// groups (`group.instance.id`), so a restart takes its partitions back
    /// without a rebalance. Default: `SLUICE_WORKER_ID`, else the host name.
    /// Workers running at the same time need distinct ids.
    #[arg(long)]
    pub worker_id: Option<String>,
}

/// Validates the config, then ingests until the sources end or a signal arrives.
pub async fn run(args: IngestArgs) -> Result<(), CliError> {
    let mut config = Config::load(&args.config)?;
    let worker =
        crate::fleet::identity::worker_id(args.worker_id.as_deref()).map_err(CliError::Usage)?;
    config.set_worker_id(&worker);
    if args.check {
        println!(
            "config {} is valid: {} source(s), {} table(s)",
            args.config.display(),
            config.sources.len(),
            config.tables.len()
        );
        return Ok(());
    }
    let stats = Arc::new(IngestStats::new());
    crate::ingest::run(&config, shutdown_on_signals(), stats.clone()).await?;
    let s = stats.snapshot();
    tracing::info!(
        received = s.received,
        committed = s.committed,
        dead_lettered = s.dead_lettered,
        commits = s.commits,
        fenced = s.fenced,
        "ingest finished"
    );
    Ok(())
}
