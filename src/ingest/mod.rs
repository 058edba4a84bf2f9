//! Running every configured source into its table.
//!
//! [`run`] opens (or creates) each table and its dead-letter table, starts
//! each of the table's sources with a position lookup on the table, and runs
//! one [`pipeline::Pipeline`] per (table, source) until every finite source is drained or
//! `shutdown` fires and the buffered work is committed. Beside each pipeline
//! runs the table's maintenance loop (`maintain::scheduler`), stopped when
//! the pipelines are done, and (with `[erasure]` enabled) the erasure loop:
//! pending requests applied and due ones purged, one worker at a time.
//! Every pipeline drops records whose key is under an erasure request; the
//! keys are read from the ledger before any source starts (ingestion waits,
//! retrying, until that read succeeds) and every `erasure.suppression_refresh`.

pub mod batcher;
pub mod budget;
pub mod mirror;
mod mirror_file;
mod mirror_patch;
pub mod pipeline;
pub mod router;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SourceConfig, TableConfig};
use crate::decode::{self, Decoder, DecoderError};
use crate::erase::{self, suppress, suppress::Suppressor};
use crate::maintain::scheduler::{self, MaintenanceLoop};
use crate::source::{file, kafka, kinesis, SourceControl, SourceEvent};
use crate::table::{self, dead_letter, TableError};
use crate::telemetry::stats::IngestStats;
use budget::MemoryBudget;
use pipeline::{Pipeline, PipelineError, PipelineParts};

/// Events buffered between a source and its pipeline.
const CHANNEL_EVENTS: usize = 64;

/// Errors that stop ingestion.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A table could not be opened or created.
    #[error(transparent)]
    Table(#[from] TableError),
    /// A table's schema could not be turned into a decoder.
    #[error(transparent)]
    Decoder(#[from] DecoderError),
    /// A Kafka source did not start.
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaSourceError),
    /// A Kinesis source did not start.
    #[error(transparent)]
    Kinesis(#[from] kinesis::KinesisSourceError),
    /// A file source matched nothing.
    #[error(transparent)]
    Files(#[from] file::FileSourceError),
    /// A pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// A pipeline task panicked.
    #[error("table `{0}`: pipeline task failed: {1}")]
    Task(String, String),
}

/// The data and dead-letter table locations (paths or URLs) of a table config.
pub fn table_locations(config: &Config, table: &TableConfig) -> (String, String) {
    let data = table
        .uri
        .clone()
        .unwrap_or_else(|| table::child_location(&config.lake.root, &table.name));
    let dead = table.dead_letter_uri.clone().unwrap_or_else(|| {
        table::child_location(&config.lake.root, &format!("{}_dead_letters", table.name))
    });
    (data, dead)
}

/// The data and dead-letter table URLs of a table config (creating local directories).
pub fn table_urls(
    config: &Config,
    table: &TableConfig,
) -> Result<(url::Url, url::Url), TableError> {
    let (data, dead) = table_locations(config, table);
    Ok((
        table::resolve_location(&data)?,
        table::resolve_location(&dead)?,
    ))
}

/// A short id for this worker: host, process and a random suffix.
pub fn worker_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// Runs all sources into their tables until they end or `shutdown` fires.
pub async fn run(
    config: &Config,
    shutdown: CancellationToken,
    stats: Arc<IngestStats>,
) -> Result<(), IngestError> {
    let budget = Arc::new(MemoryBudget::new(config.batching.memory_budget.as_usize()));
    run_with_budget(config, shutdown, stats, budget).await
}

/// [`run`] with a caller-supplied memory budget (tests read its high-water mark).
pub async fn run_with_budget(
    config: &Config,
    shutdown: CancellationToken,
    stats: Arc<IngestStats>,
    budget: Arc<MemoryBudget>,
) -> Result<(), IngestError> {
    table::preflight(&config.lake.root, &config.lake.storage_options).await?;
    // Every Kinesis stream must answer before any table is created.
    let mut kinesis_clients = HashMap::new();
    for (index, source) in config.sources.iter().enumerate() {
        if let SourceConfig::Kinesis(k) = source {
            kinesis_clients.insert(k.name.clone(), kinesis::connect(k, index).await?);
        }
    }
    let worker = worker_id();
    let mut tasks = tokio::task::JoinSet::new();
    let maintenance_stop = shutdown.child_token();
    let mut maintenance = Vec::new();
    let mut suppressors = Vec::new();
    let mut decoders = Vec::new();
    for table_config in &config.tables {
        let mut per_source = Vec::new();
        for source in config.sources_for(table_config) {
            match decode::decoder_for(table_config, source, &shutdown).await {
                Ok(typed) => per_source.push(typed),
                Err(DecoderError::Stopped) => return Ok(()),
                Err(error) => return Err(error.into()),
            }
        }
        let schema = per_source[0].0.table_schema();
        if let Some((other, _)) = per_source.iter().find(|(d, _)| d.table_schema() != schema) {
            return Err(DecoderError::Schema {
                table: table_config.name.clone(),
                source_name: table_config.source.join(", "),
                reason: format!(
                    "the sources type the table differently: {:?} vs {:?}",
                    schema.fields(),
                    other.table_schema().fields()
                ),
            }
            .into());
        }
        suppressors.push(Suppressor::new(
            &table_config.name,
            schema,
            config.erasure.key_hasher(),
        ));
        decoders.push(per_source);
    }
    if !suppress::first_refresh(
        &config.lake.root,
        &config.lake.storage_options,
        &suppressors,
        &shutdown,
    )
    .await
    {
        return Ok(());
    }
    let suppressor_set: suppress::SuppressorSet =
        Arc::new(std::sync::Mutex::new(suppressors.clone()));
    maintenance.push(suppress::spawn_refresher(
        config.lake.root.clone(),
        config.lake.storage_options.clone(),
        suppressor_set.clone(),
        config.erasure.suppression_refresh.0,
        maintenance_stop.clone(),
    ));
    if config.erasure.enabled {
        maintenance.push(erase::spawn_loop(
            config.clone(),
            worker.clone(),
            maintenance_stop.clone(),
        ));
    }
    for ((table_config, suppressor), per_source) in
        config.tables.iter().zip(suppressors).zip(decoders)
    {
        // One pipeline per source; pipelines of one table commit side by
        // side like workers of a fleet, each fencing its own positions.
        for (source, (decoder, schema_source)) in config.sources_for(table_config).zip(per_source) {
            let about = table::about::About::of(config, table_config, &schema_source);
            let (pipeline, events) = start_table(
                config,
                table_config,
                source,
                (decoder, about),
                &WorkerParts {
                    id: &worker,
                    budget: &budget,
                    stats: &stats,
                    kinesis_clients: &kinesis_clients,
                },
                suppressor.clone(),
            )
            .await?;
            let token = shutdown.clone();
            let name = table_config.name.clone();
            tasks.spawn(async move {
                (
                    name,
                    pipeline
                        .run(events, token)
                        .await
                        .map_err(IngestError::Pipeline),
                )
            });
        }
        if config.maintenance.enabled {
            let (url, _) = table_urls(config, table_config)?;
            maintenance.push(
                spawn_maintenance(config, table_config, url, &worker, &maintenance_stop).await?,
            );
        } else {
            tracing::info!(
                table = %table_config.name,
                "maintenance is disabled: run `sluice compact`, `sluice checkpoint` (which expires the log) and `sluice vacuum` on a schedule, or small files, log entries and removed files accumulate"
            );
        }
    }
    // Pattern sources: one consumer each, its topics' tables made by template.
    let shared_config = Arc::new(config.clone());
    for source in &config.sources {
        let SourceConfig::Kafka(kafka_config) = source else {
            continue;
        };
        if kafka_config.topic_pattern.is_none() {
            continue;
        }
        let (tx, rx) = mpsc::channel(CHANNEL_EVENTS);
        let control = kafka::spawn(
            kafka_config,
            config.batching.shutdown_grace.0,
            router::lookup(shared_config.clone(), kafka_config.name.clone()),
            budget.clone(),
            tx,
            stats.clone(),
        )?;
        let routing = router::Router::new(router::RouterParts {
            config: shared_config.clone(),
            source: kafka_config.clone(),
            worker: worker.clone(),
            budget: budget.clone(),
            stats: stats.clone(),
            control,
            suppressors: suppressor_set.clone(),
            shutdown: shutdown.clone(),
            maintenance_stop: maintenance_stop.clone(),
        });
        let name = kafka_config.name.clone();
        tasks.spawn(async move { (name, routing.run(rx).await) });
    }
    stats.set_started(true);
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let failure = match joined {
            Ok((_, Ok(()))) => None,
            Ok((_, Err(e))) => Some(e),
            Err(e) => Some(IngestError::Task("?".into(), e.to_string())),
        };
        if let Some(error) = failure {
            stats.set_failed();
            tracing::error!(%error, "pipeline stopped");
            shutdown.cancel();
            first_error.get_or_insert(error);
        }
    }
    stats.set_started(false);
    maintenance_stop.cancel();
    for handle in maintenance {
        let _ = handle.await;
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// What every table of a worker shares.
pub(crate) struct WorkerParts<'a> {
    pub id: &'a str,
    pub budget: &'a Arc<MemoryBudget>,
    pub stats: &'a Arc<IngestStats>,
    pub kinesis_clients: &'a HashMap<String, aws_sdk_kinesis::Client>,
}

/// Starts the maintenance loop of the table at `url`.
pub(crate) async fn spawn_maintenance(
    config: &Config,
    table_config: &TableConfig,
    url: url::Url,
    worker: &str,
    stop: &CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, IngestError> {
    let maintenance_loop = MaintenanceLoop::new(
        &table_config.name,
        url,
        config.lake.storage_options.clone(),
        config.maintenance.clone(),
        table_config.zorder_columns(),
        worker,
    )
    .await
    .map_err(|e| IngestError::Task(table_config.name.clone(), e.to_string()))?;
    Ok(scheduler::spawn(maintenance_loop, stop.clone()))
}

/// A table and its dead-letter table, opened or created, with what the
/// table says about itself brought up to date.
pub(crate) struct OpenTables {
    pub data_url: url::Url,
    pub table: deltalake::DeltaTable,
    pub dead_table: deltalake::DeltaTable,
}

pub(crate) async fn open_tables(
    config: &Config,
    table_config: &TableConfig,
    decoder: &Decoder,
    about: &table::about::About,
) -> Result<OpenTables, IngestError> {
    let (data_url, dead_url) = table_urls(config, table_config)?;
    let options = &config.lake.storage_options;
    let schema = decoder.table_schema();
    // The two tables are independent: on an object store their requests
    // overlap rather than queue one behind the other.
    let data_table = async {
        let table = table::open_or_create(
            &data_url,
            options,
            &table_config.name,
            &schema,
            &table_config.partition_by,
            &[
                table::table_properties(Some(&table_config.key), &table_config.properties),
                table_config
                    .uses_deletion_vectors()
                    .then(|| {
                        (
                            table::deletion_vectors::ENABLE_PROPERTY.to_string(),
                            "true".to_string(),
                        )
                    })
                    .into_iter()
                    .collect(),
                about.pairs(),
            ]
            .concat(),
            about.description.as_deref(),
        )
        .await?;
        let table = about.refresh(table, &table_config.name).await;
        if let Decoder::JsonEvolving(evolving) = decoder {
            if let Ok(snapshot) = table.snapshot() {
                let adopted = evolving.adopt(&snapshot.snapshot().arrow_schema());
                if !adopted.is_empty() {
                    tracing::info!(table = %table_config.name, ?adopted, "columns added by earlier runs taken from the table");
                }
            }
        }
        Ok::<_, table::TableError>(table)
    };
    let dead_table = dead_letter::open(
        &dead_url,
        options,
        &table_config.name,
        &table_config.properties,
    );
    let (table, dead_table) = tokio::try_join!(data_table, dead_table)?;
    Ok(OpenTables {
        data_url,
        table,
        dead_table,
    })
}

/// The pipeline of `table_config` fed by `source_name` through `control`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pipeline_for(
    config: &Config,
    table_config: &TableConfig,
    source_name: &str,
    decoder: Decoder,
    tables: OpenTables,
    parts: &WorkerParts<'_>,
    suppressor: Arc<Suppressor>,
    control: Arc<dyn SourceControl>,
) -> Result<Pipeline, IngestError> {
    Ok(Pipeline::new(PipelineParts {
        name: table_config.name.clone(),
        // Pipelines of one table commit side by side: each is its own
        // streaming query (`queryId`) with its own epochs.
        worker: if table_config.source.len() > 1 {
            format!("{}/{}", parts.id, source_name)
        } else {
            parts.id.to_string()
        },
        key: table_config.key.clone(),
        batching: config.batching.clone(),
        decoder,
        table: tables.table,
        dead_table: tables.dead_table,
        budget: parts.budget.clone(),
        control,
        stats: parts.stats.clone(),
        suppressor,
        storage_options: config.lake.storage_options.clone(),
        mirror_key: (table_config.mode == crate::config::TableMode::Mirror)
            .then(|| table_config.primary_key.clone()),
        mirror_image: table_config
            .columns
            .iter()
            .map(|c| c.name.clone())
            .chain(table_config.derived.iter().map(|d| d.name.clone()))
            .filter(|name| !table_config.primary_key.contains(name))
            .collect(),
        mirror_marks: table_config.uses_deletion_vectors(),
    })?)
}

async fn start_table(
    config: &Config,
    table_config: &TableConfig,
    source: &SourceConfig,
    (decoder, about): (Decoder, table::about::About),
    parts: &WorkerParts<'_>,
    suppressor: Arc<Suppressor>,
) -> Result<(Pipeline, mpsc::Receiver<SourceEvent>), IngestError> {
    let tables = open_tables(config, table_config, &decoder, &about).await?;
    let options = &config.lake.storage_options;
    let lookup = table::position_lookup(tables.data_url.clone(), options.clone());
    let (tx, rx) = mpsc::channel(CHANNEL_EVENTS);
    let control: Arc<dyn SourceControl> = match source {
        SourceConfig::Kafka(kafka_config) => kafka::spawn(
            kafka_config,
            config.batching.shutdown_grace.0,
            lookup,
            parts.budget.clone(),
            tx,
            parts.stats.clone(),
        )?,
        SourceConfig::File(file_config) => {
            let files = file::FileSet::resolve(file_config)?;
            file::spawn(&file_config.name, files, lookup, parts.budget.clone(), tx)
        }
        SourceConfig::Kinesis(kinesis_config) => kinesis::spawn(kinesis::SourceParts {
            config: kinesis_config.clone(),
            client: parts
                .kinesis_clients
                .get(&kinesis_config.name)
                .expect("connected before the tables were opened")
                .clone(),
            store: tables.table.object_store(),
            worker: parts.id.to_string(),
            grace: config.batching.shutdown_grace.0,
            lookup,
            budget: parts.budget.clone(),
            tx,
            stats: parts.stats.clone(),
        }),
    };
    let pipeline = pipeline_for(
        config,
        table_config,
        source.name(),
        decoder,
        tables,
        parts,
        suppressor,
        control,
    )?;
    Ok((pipeline, rx))
}
