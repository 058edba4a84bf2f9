//! Command-line interface: one module per subcommand.

pub mod bench;
mod bench_cpu;
mod bench_table;
pub mod catalog;
pub mod check;
pub mod checkpoint;
pub mod compact;
pub mod demo;
pub mod forget;
pub mod generate;
pub mod ingest;
pub mod serve;
pub mod status;
pub mod vacuum;
pub mod zorder;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::telemetry::LogFormat;

/// sluice: stream Kafka topics and NDJSON files into Delta Lake tables, exactly once.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, propagate_version = true)]
pub struct Cli {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The default log level for the flags given.
    pub fn verbosity(&self) -> &'static str {
        // The demo draws a progress bar; its per-commit log lines need -v.
        let demo = matches!(self.command, Command::Demo(_));
        match (self.quiet, self.verbose) {
            (true, _) => "warn",
            (false, 0) if demo => "warn",
            (false, 0) => "info",
            (false, 1) => "debug",
            (false, _) => "trace",
        }
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the configured sources into their tables until stopped (SIGTERM/SIGINT drain).
    Ingest(ingest::IngestArgs),
    /// Run as a fleet worker: every pipeline, maintenance, erasure, and /metrics /healthz /readyz.
    Serve(serve::ServeArgs),
    /// Run an embedded Kafka broker, produce ride events and ingest them into ./lake.
    Demo(demo::DemoArgs),
    /// Show a table's version, files, and recorded source positions.
    Status(status::StatusArgs),
    /// Every table of the lake: what it is, where it comes from, how fresh and complete.
    Catalog(catalog::CatalogArgs),
    /// Bin-pack small files into files near a target size (dataChange=false).
    Compact(compact::CompactArgs),
    /// Cluster rows by columns so point lookups skip files (incremental, bounded memory).
    Zorder(zorder::ZOrderArgs),
    /// Write a checkpoint and delete expired log files.
    Checkpoint(checkpoint::CheckpointArgs),
    /// Whether BigQuery and Spark can read a Delta table (exit 1 if not).
    Check(check::CheckArgs),
    /// Delete removed and orphaned data files past the retention.
    Vacuum(vacuum::VacuumArgs),
    /// GDPR erasure by subject key: request, apply, verify, status, receipt.
    Forget(forget::ForgetArgs),
    /// Write demo ride events as NDJSON (for backfills and benchmarks).
    Generate(generate::GenerateArgs),
    /// One benchmark measurement (used by scripts/bench).
    #[command(hide = true)]
    Bench(bench::BenchArgs),
}

/// Errors any subcommand can end with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The config is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Ingestion stopped with an error.
    #[error(transparent)]
    Ingest(#[from] crate::ingest::IngestError),
    /// A table could not be read.
    #[error(transparent)]
    Table(#[from] crate::table::TableError),
    /// A maintenance operation failed.
    #[error(transparent)]
    Maintain(#[from] crate::maintain::MaintainError),
    /// An erasure step failed or its input is invalid.
    #[error(transparent)]
    Erase(#[from] crate::erase::EraseError),
    /// An argument is malformed.
    #[error("{0}")]
    Usage(String),
    /// The demo could not run.
    #[error("demo: {0}")]
    Demo(String),
    /// Writing output failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The command ran and found what it was asked to look for (`check`).
    #[error("{0}")]
    Findings(String),
}

impl CliError {
    /// The process's exit status: 1 for findings, 2 for failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Findings(_) => 1,
            _ => 2,
        }
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Ingest(args) => ingest::run(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Catalog(args) => catalog::run(args).await,
        Command::Compact(args) => compact::run(args).await,
        Command::Zorder(args) => zorder::run(args).await,
        Command::Checkpoint(args) => checkpoint::run(args).await,
        Command::Check(args) => check::run(args).await,
        Command::Vacuum(args) => vacuum::run(args).await,
        Command::Forget(args) => forget::run(args).await,
        Command::Generate(args) => generate::run(args),
        Command::Bench(args) => bench::run(args).await,
    }
}

/// A progress bar over `total` units, drawn only on a terminal.
pub fn progress_bar(total: u64, template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!("{{elapsed:>4}} [{{bar:30}}] {template}"))
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// Opens an existing table given as a path or URL.
pub async fn open_table(location: &str) -> Result<deltalake::DeltaTable, CliError> {
    let url = crate::table::resolve_existing(location)?;
    Ok(crate::table::open(&url, &Default::default()).await?)
}

/// A token cancelled on the first SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("install SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("signal received: draining");
        cancel.cancel();
    });
    token
}
