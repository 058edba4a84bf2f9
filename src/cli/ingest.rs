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
}

/// Validates the config, then ingests until the sources end or a signal arrives.
pub async fn run(args: IngestArgs) -> Result<(), CliError> {
    let config = Config::load(&args.config)?;
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
