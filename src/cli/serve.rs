//! `sluice serve --config FILE`: run the worker with its HTTP endpoints.

use std::path::PathBuf;
use std::sync::Arc;

use super::{shutdown_on_signals, CliError};
use crate::config::Config;
use crate::ingest::budget::MemoryBudget;
use crate::serve::{http, Probe};
use crate::telemetry::stats::IngestStats;

/// Arguments of `sluice serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The TOML config file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Address for /metrics, /healthz and /readyz (default: `service.listen`).
    #[arg(long)]
    pub listen: Option<String>,
    /// This worker's stable id: its static membership in Kafka consumer
    /// groups (`group.instance.id`), so a restart takes its partitions back
    /// without a rebalance. Default: `SLUICE_WORKER_ID`, else the host name.
    /// Workers running at the same time need distinct ids.
    #[arg(long)]
    pub worker_id: Option<String>,
}

/// Runs every pipeline and the HTTP endpoints until a signal drains them.
pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    let mut config = Config::load(&args.config)?;
    let worker =
        crate::fleet::identity::worker_id(args.worker_id.as_deref()).map_err(CliError::Usage)?;
    config.set_worker_id(&worker);
    let listen = args.listen.unwrap_or_else(|| config.service.listen.clone());
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| CliError::Usage(format!("service.listen: cannot listen on {listen}: {e}")))?;
    let address = listener.local_addr()?;
    println!("sluice serve: listening on http://{address}");
    let stats = Arc::new(IngestStats::new());
    let budget = Arc::new(MemoryBudget::new(config.batching.memory_budget.as_usize()));
    let draining = shutdown_on_signals();
    let probe = Arc::new(Probe {
        stats: stats.clone(),
        budget: budget.clone(),
        draining: draining.clone(),
    });
    let stop_http = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(http::serve(listener, probe, stop_http.clone()));
    tracing::info!(%address, "serving /metrics /healthz /readyz");
    // Readiness drops at the signal; the pipelines stop `drain_delay` later.
    let stop_ingest = tokio_util::sync::CancellationToken::new();
    {
        let (draining, stop_ingest) = (draining.clone(), stop_ingest.clone());
        let delay = config.service.drain_delay.0;
        tokio::spawn(async move {
            draining.cancelled().await;
            tracing::info!(
                ?delay,
                "draining: /readyz is 503; stopping pipelines after the delay"
            );
            tokio::time::sleep(delay).await;
            stop_ingest.cancel();
        });
    }
    let result = crate::ingest::run_with_budget(&config, stop_ingest, stats, budget).await;
    stop_http.cancel();
    let _ = server.await;
    result?;
    tracing::info!("drained; exiting");
    Ok(())
}
