//! `sluice bench MODE`: one measured run for `scripts/bench`, printed as a
//! JSON line (events, bytes, seconds, peak RSS of this process).
//!
//! - `raw`: the raw limit: arrow-json decode of the NDJSON bytes with the
//!   demo table's schema plus Parquet zstd encode into a byte sink, on one
//!   thread, nothing else.
//! - `file`: `sluice` ingest of the same file into a local table.
//! - `open`: median time to open a table and load its snapshot.
//! - `commit`: `--events` demo events ingested into the existing table at
//!   `--input` in commits of 10 rows; reports the mean commit latency (batch
//!   flush to landed commit, including the checkpoint every 10 commits).
//! - `kafka`: the same events produced to the embedded broker while sluice
//!   consumes them, never more than 100k ahead per 16 partitions (the broker
//!   keeps only 5 MB per partition), timed from the first produced event to the last commit;
//!   the producer shares the CPU.
//! - `fleet`: like `kafka`, with `--workers` consumers of one group in this
//!   process writing one table on an S3 server (`--s3-endpoint`), reporting
//!   commits, commit retries (conflicts) and fenced batches.
//! - `erase-table`: builds the erasure benchmark's table at `--lake`
//!   (`--events` rows in `--files` files, see `bench_table`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::{Field, Schema};
use arrow::json::ReaderBuilder;
use deltalake::parquet::arrow::ArrowWriter;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::bench_cpu;
use super::CliError;
use crate::config::Config;
use crate::decode::JsonDecoder;
use crate::demo::broker::{self, EmbeddedKafka};
use crate::demo::encode::{DemoFormat, Encoder};
use crate::demo::events::{RideEvents, RIDES_TABLE_COLUMNS};
use crate::table::writer::writer_properties;
use crate::telemetry::stats::IngestStats;

/// Arguments of `sluice bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub mode: BenchMode,
    /// NDJSON input (raw, file).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Lake directory for the table (file, kafka).
    #[arg(long, default_value = "./bench-lake")]
    pub lake: PathBuf,
    /// Events to produce (kafka), rows to write (erase-table).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Files to write (erase-table).
    #[arg(long, default_value_t = 512)]
    pub files: u64,
    /// Distinct users (erase-table).
    #[arg(long, default_value_t = 1_000_000)]
    pub users: u64,
    /// Workers (fleet).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// S3 API endpoint with a `bench` bucket (fleet).
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// The input's format (file): `json` (NDJSON), `avro` (an object
    /// container file) or `protobuf` (length-delimited `demo.v1.Ride`).
    #[arg(long, default_value = "json")]
    pub format: String,
    /// The descriptor set (file, `--format protobuf`).
    #[arg(long)]
    pub descriptor_set: Option<PathBuf>,
    /// Topics the events are spread over (topics): one table each, made
    /// by a template of a `topic_pattern` source.
    #[arg(long, default_value_t = 200)]
    pub topics: usize,
    /// Partitions of each topic (topics; default: 16 for one topic, 1 for
    /// several).
    #[arg(long)]
    pub partitions: Option<i32>,
    /// How long the benchmark's producer waits to fill a partition's batch
    /// (kafka, fleet, topics). The embedded broker serves one producer
    /// batch per partition per fetch, so many small partitions read slowly
    /// when their batches hold a record or two.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// `max_latency` of the tables (topics).
    #[arg(long, default_value = "2s")]
    pub max_latency: String,
    /// A running Kafka broker to use instead of the embedded one
    /// (new-topic; topics are created through its admin API).
    #[arg(long)]
    pub brokers: Option<String>,
}

/// Benchmark modes.
#[derive(Debug, Clone, Copy, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchMode {
    /// arrow-json decode + Parquet encode only.
    Raw,
    /// File source into a local table.
    File,
    /// Embedded Kafka into a local table.
    Kafka,
    /// Open the table at `--input` (a table path) and load its snapshot, 5 times.
    Open,
    /// Append `--events` rows to the table at `--input` in commits of 10 rows.
    Commit,
    /// Build the erasure benchmark's table at `--lake`.
    EraseTable,
    /// `--workers` consumers into one table on the S3 server at `--s3-endpoint`.
    Fleet,
    /// The same events over `--topics` topics of a pattern source, one
    /// template table each (1 topic: one table).
    Topics,
    /// Time from a new matching topic's first record to its table's first
    /// commit, `--events` times (a pattern source, refresh 1s, max_latency 300ms).
    NewTopic,
}

#[derive(Debug, Serialize)]
struct Measurement {
    mode: BenchMode,
    events: u64,
    bytes: u64,
    seconds: f64,
    peak_rss_kib: u64,
    /// CPU time (user and system) of the whole process while the clock ran:
    /// the workers, and the embedded broker and producer beside them.
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_seconds: Option<f64>,
    /// The part of `cpu_seconds` the embedded broker and the bench's
    /// producer used (their threads, [`super::bench_cpu`]); the rest is the
    /// workers'.
    #[serde(skip_serializing_if = "Option::is_none")]
    rig_cpu_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fleet: Option<FleetFigures>,
}

fn rides_config(lake: &str, source: &str) -> Result<Config, CliError> {
    let text = format!(
        "[lake]\nroot = \"{lake}\"\n\n[batching]\nmax_latency = \"2s\"\n\n{source}\n\n[[tables]]\nname = \"rides\"\nsource = \"bench\"\n{RIDES_TABLE_COLUMNS}"
    );
    let config = Config::parse(&text, "bench config")?;
    config.validate()?;
    Ok(config)
}

/// The demo table typed by its source's schema: the demo table's key,
/// partitioning and derived date.
fn typed_config(lake: &str, source: &str) -> Result<Config, CliError> {
    let text = format!(
        "[lake]\nroot = \"{lake}\"\n\n[batching]\nmax_latency = \"2s\"\n\n{source}\n\n[[tables]]\nname = \"rides\"\nsource = \"bench\"\nkey = \"user_id\"\npartition_by = [\"date\"]\nderived = [{{ name = \"date\", from = \"event_time\", transform = \"date\" }}]"
    );
    let config = Config::parse(&text, "bench config")?;
    config.validate()?;
    Ok(config)
}

fn input(args: &BenchArgs) -> Result<PathBuf, CliError> {
    args.input
        .clone()
        .ok_or_else(|| CliError::Demo("--input is required for this mode".into()))
}

/// Runs one measurement and prints it.
pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    let measurement = match args.mode {
        BenchMode::Raw => raw(&input(&args)?)?,
        BenchMode::File => {
            let path = input(&args)?;
            let bytes = std::fs::metadata(&path)?.len();
            let lake = fresh_lake(&args.lake)?;
            let mut source = format!(
                "[[sources]]\nkind = \"file\"\nname = \"bench\"\npath = \"{}\"\nformat = \"{}\"",
                path.display(),
                args.format
            );
            if let Some(descriptors) = &args.descriptor_set {
                source.push_str(&format!(
                    "\ndescriptor_set = \"{}\"\nmessage = \"demo.v1.Ride\"",
                    descriptors.display()
                ));
            }
            let config = if args.format == "json" {
                rides_config(&lake, &source)?
            } else {
                typed_config(&lake, &source)?
            };
            let stats = Arc::new(IngestStats::new());
            let started = Instant::now();
            crate::ingest::run(&config, CancellationToken::new(), stats.clone()).await?;
            let s = stats.snapshot();
            Measurement {
                mode: args.mode,
                events: s.committed + s.dead_lettered,
                bytes,
                seconds: started.elapsed().as_secs_f64(),
                peak_rss_kib: 0,
                cpu_seconds: None,
                rig_cpu_seconds: None,
                fleet: None,
            }
        }
        BenchMode::Kafka => kafka(&args).await?,
        BenchMode::Fleet => fleet(&args).await?,
        BenchMode::Topics => topics(&args).await?,
        BenchMode::NewTopic => return new_topic(&args).await,
        BenchMode::EraseTable => {
            let (events, bytes, seconds) =
                super::bench_table::build(&args.lake, args.events, args.files, args.users).await?;
            Measurement {
                mode: args.mode,
                events,
                bytes,
                seconds,
                peak_rss_kib: 0,
                cpu_seconds: None,
                rig_cpu_seconds: None,
                fleet: None,
            }
        }
        BenchMode::Commit => commit(&args).await?,
        BenchMode::Open => {
            let path = input(&args)?;
            let url = crate::table::resolve_existing(&path.display().to_string())?;
            let mut times = Vec::new();
            for _ in 0..5 {
                let started = Instant::now();
                crate::table::open(&url, &Default::default()).await?;
                times.push(started.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            Measurement {
                mode: args.mode,
                events: 0,
                bytes: 0,
                seconds: times[times.len() / 2],
                peak_rss_kib: 0,
                cpu_seconds: None,
                rig_cpu_seconds: None,
                fleet: None,
            }
        }
    };
    let measurement = Measurement {
        peak_rss_kib: peak_rss_kib(),
        ..measurement
    };
    println!("{}", serde_json::to_string(&measurement).expect("json"));
    Ok(())
}

/// Appends demo events to an existing rides table in commits of 10 rows.
async fn commit(args: &BenchArgs) -> Result<Measurement, CliError> {
    let table = input(args)?;
    // An existing table only: this mode measures commits, it creates nothing.
    crate::table::resolve_existing(&table.display().to_string())?;
    let (Some(lake), Some(name)) = (table.parent(), table.file_name()) else {
        return Err(CliError::Demo(format!(
            "--input {} is not a table directory",
            table.display()
        )));
    };
    let events_file = tempfile::NamedTempFile::new()?;
    {
        let mut out = std::io::BufWriter::new(events_file.reopen()?);
        let mut events = RideEvents::new(7, 1000, 0.0);
        for _ in 0..args.events {
            std::io::Write::write_all(&mut out, &events.next_event().payload)?;
            std::io::Write::write_all(&mut out, b"\n")?;
        }
        std::io::Write::flush(&mut out)?;
    }
    let mut config = rides_config(
        &lake.display().to_string(),
        &format!(
            "[[sources]]\nkind = \"file\"\nname = \"bench\"\npath = \"{}\"",
            events_file.path().display()
        ),
    )?;
    config.batching.max_rows = 10;
    config.maintenance.enabled = false;
    config.tables[0].name = name.to_string_lossy().into_owned();
    config.validate()?;
    let stats = Arc::new(IngestStats::new());
    crate::ingest::run(&config, CancellationToken::new(), stats.clone()).await?;
    let (_, commits, sum) = stats.commit_seconds().read();
    Ok(Measurement {
        mode: args.mode,
        events: commits,
        bytes: 0,
        seconds: sum / commits.max(1) as f64,
        peak_rss_kib: 0,
        cpu_seconds: None,
        rig_cpu_seconds: None,
        fleet: None,
    })
}

fn fresh_lake(dir: &std::path::Path) -> Result<String, CliError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    Ok(dir.canonicalize()?.display().to_string())
}

fn raw(path: &std::path::Path) -> Result<Measurement, CliError> {
    let config = rides_config(
        "/unused",
        "[[sources]]\nkind = \"file\"\nname = \"bench\"\npath = \"x\"",
    )?;
    let table = &config.tables[0];
    let decoder = JsonDecoder::new(table).map_err(|e| CliError::Demo(e.to_string()))?;
    // The declared columns only, timestamps decoded natively by arrow-json.
    let declared = table.columns.len();
    let schema = Arc::new(Schema::new(
        decoder.table_schema().fields()[..declared]
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let started = Instant::now();
    let mut json = ReaderBuilder::new(schema.clone())
        .with_batch_size(8192)
        .build_decoder()
        .map_err(|e| CliError::Demo(e.to_string()))?;
    let mut writer = ArrowWriter::try_new(
        std::io::sink(),
        schema,
        Some(writer_properties(Some(&table.key))),
    )
    .map_err(|e| CliError::Demo(e.to_string()))?;
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let (mut events, mut bytes) = (0u64, 0u64);
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let consumed = json
            .decode(buf)
            .map_err(|e| CliError::Demo(e.to_string()))?;
        bytes += consumed as u64;
        reader.consume(consumed);
        if consumed == 0 || json.len() >= 8192 {
            if let Some(batch) = json.flush().map_err(|e| CliError::Demo(e.to_string()))? {
                events += batch.num_rows() as u64;
                writer
                    .write(&batch)
                    .map_err(|e| CliError::Demo(e.to_string()))?;
            }
        }
    }
    if let Some(batch) = json.flush().map_err(|e| CliError::Demo(e.to_string()))? {
        events += batch.num_rows() as u64;
        writer
            .write(&batch)
            .map_err(|e| CliError::Demo(e.to_string()))?;
    }
    writer.close().map_err(|e| CliError::Demo(e.to_string()))?;
    Ok(Measurement {
        mode: BenchMode::Raw,
        events,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_kib: 0,
        cpu_seconds: None,
        rig_cpu_seconds: None,
        fleet: None,
    })
}

/// `kafka`: the demo events in `--format`, encoded by the producer as the
/// demo does, through the embedded broker into a local table.
async fn kafka(args: &BenchArgs) -> Result<Measurement, CliError> {
    let lake = fresh_lake(&args.lake)?;
    let format = <DemoFormat as clap::ValueEnum>::from_str(&args.format, true)
        .map_err(|e| CliError::Usage(format!("--format {}: {e}", args.format)))?;
    let (encoder, keys) = Encoder::new(format, Path::new(&lake)).map_err(CliError::Demo)?;
    let run = kafka_workers(
        args,
        1,
        false,
        encoder,
        &single_topic(),
        |source| match format {
            DemoFormat::Json => rides_config(&lake, source),
            _ => typed_config(&lake, &format!("{source}\n{keys}")),
        },
    )
    .await?;
    Ok(run.measurement)
}

/// The topics a Kafka run creates and how its source subscribes.
struct Topics {
    created: Vec<(String, i32)>,
    subscription: String,
}

/// One topic of 16 partitions, subscribed by name.
fn single_topic() -> Topics {
    Topics {
        created: vec![("bench".to_string(), 16)],
        subscription: "topics = [\"bench\"]".to_string(),
    }
}

/// `topics`: the demo events spread over `--topics` topics (`--partitions`
/// each: by default one, and 16 for one topic) of a `topic_pattern` source, each
/// topic's table made by one template on its first record.
async fn topics(args: &BenchArgs) -> Result<Measurement, CliError> {
    let lake = fresh_lake(&args.lake)?;
    let count = args.topics.max(1);
    let partitions = args
        .partitions
        .unwrap_or(if count == 1 { 16 } else { 1 })
        .max(1);
    let topics = Topics {
        created: (0..count)
            .map(|n| (format!("bench.t{n:03}"), partitions))
            .collect(),
        subscription: "topic_pattern = '^bench\\..+'\nmetadata_refresh = \"1s\"".to_string(),
    };
    let run = kafka_workers(args, 1, true, Encoder::Json, &topics, |source| {
        let text = format!(
            "[lake]\nroot = \"{lake}\"\n\n[batching]\nmax_latency = \"{}\"\n[maintenance]\nenabled = false\n[erasure]\nenabled = false\n\n{source}\n\n[[table_templates]]\nsource = \"bench\"\ntopic = '^bench\\.(?P<name>.+)$'\nname = \"rides_{{name}}\"\n{RIDES_TABLE_COLUMNS}",
            args.max_latency
        );
        let config = Config::parse(&text, "bench config")?;
        config.validate()?;
        Ok(config)
    })
    .await?;
    // The commits made, to tell how much of the run they take.
    Ok(Measurement {
        fleet: Some(run.fleet),
        ..run.measurement
    })
}

/// `new-topic`: a pattern source runs; `--events` times a topic is created
/// (by producing its first record: the embedded broker creates it) and the
/// time until its table's first commit is printed with the settings that
/// bound it.
async fn new_topic(args: &BenchArgs) -> Result<(), CliError> {
    let lake = fresh_lake(&args.lake)?;
    // The embedded broker creates a topic when a record is first sent to it.
    let embedded = match &args.brokers {
        Some(_) => None,
        None => Some(EmbeddedKafka::start("bench.t000", 1).map_err(CliError::Demo)?),
    };
    let bootstrap = match (&args.brokers, &embedded) {
        (Some(brokers), _) => brokers.clone(),
        (None, Some(cluster)) => cluster.bootstrap_servers().to_string(),
        (None, None) => unreachable!("one or the other"),
    };
    let create = |topic: String| {
        let bootstrap = bootstrap.clone();
        let external = args.brokers.is_some();
        async move {
            if !external {
                return Ok(());
            }
            use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
            let admin: AdminClient<rdkafka::client::DefaultClientContext> =
                rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap)
                    .create()
                    .map_err(|e| CliError::Demo(e.to_string()))?;
            let created = admin
                .create_topics(
                    &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
                    &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
                )
                .await
                .map_err(|e| CliError::Demo(e.to_string()))?;
            for result in created {
                result.map_err(|(t, e)| CliError::Demo(format!("create {t}: {e}")))?;
            }
            Ok::<(), CliError>(())
        }
    };
    create("bench.t000".to_string()).await?;
    let (refresh_ms, latency_ms) = (1000, 300);
    let text = format!(
        "[lake]\nroot = \"{lake}\"\n\n[batching]\nmax_latency = \"{latency_ms}ms\"\n[maintenance]\nenabled = false\n[erasure]\nenabled = false\n\n[[sources]]\nkind = \"kafka\"\nname = \"bench\"\nbrokers = \"{}\"\ntopic_pattern = '^bench\\..+'\nmetadata_refresh = \"{refresh_ms}ms\"\ngroup_id = \"bench\"\n\n[[table_templates]]\nsource = \"bench\"\ntopic = '^bench\\.(?P<name>.+)$'\nname = \"rides_{{name}}\"\n{RIDES_TABLE_COLUMNS}",
        bootstrap
    );
    let config = Config::parse(&text, "bench config")?;
    config.validate()?;
    let stats = Arc::new(IngestStats::new());
    let shutdown = CancellationToken::new();
    let task = {
        let (config, stats, shutdown) = (config.clone(), stats.clone(), shutdown.clone());
        tokio::spawn(async move { crate::ingest::run(&config, shutdown, stats).await })
    };
    let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "0")
        .create()
        .map_err(|e| CliError::Demo(e.to_string()))?;
    let mut events = RideEvents::new(3, 1000, 0.0);
    let mut send = |topic: &str| -> Result<(), CliError> {
        let event = events.next_event();
        broker::send(&producer, topic, &event.key, &event.payload).map_err(CliError::Demo)?;
        broker::flush(&producer).map_err(CliError::Demo)
    };
    let wait_for = |count: u64| {
        let stats = stats.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while stats.snapshot().committed < count {
                if Instant::now() > deadline {
                    return Err(CliError::Demo(format!(
                        "no commit of record {count} in 120s"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(())
        }
    };
    // The group has joined and the first table exists.
    send("bench.t000")?;
    wait_for(1).await?;
    let mut samples = Vec::new();
    for n in 1..=args.events.max(1) {
        let topic = format!("bench.n{n:03}");
        let started = Instant::now();
        create(topic.clone()).await?;
        send(&topic)?;
        wait_for(1 + n).await?;
        samples.push(started.elapsed().as_secs_f64());
    }
    shutdown.cancel();
    task.await.map_err(|e| CliError::Demo(e.to_string()))??;
    println!(
        "{}",
        serde_json::json!({
            "mode": "new-topic",
            "seconds": samples,
            "metadata_refresh_ms": refresh_ms,
            "max_latency_ms": latency_ms,
        })
    );
    Ok(())
}

/// Figures of a run with several workers (`fleet`).
#[derive(Debug, Default, Serialize)]
struct FleetFigures {
    workers: usize,
    commits: u64,
    commit_retries: u64,
    commit_rebases: u64,
    fenced: u64,
}

struct KafkaRun {
    measurement: Measurement,
    fleet: FleetFigures,
}

/// Records the producer may be ahead of the consumers per 16 partitions
/// (~44 MB of demo events, about half of what 16 partitions retain).
const AHEAD_PER_16_PARTITIONS: u64 = 100_000;

/// Produces `args.events` ride events to an embedded broker while `workers`
/// ingest runs (one consumer each, same group) consume them into the table
/// of `config(source section)`.
///
/// The embedded broker keeps 5 MB per partition, so the events are produced
/// while sluice consumes them, at most 100k (~44 MB) ahead of it per 16
/// partitions (16 partitions keep ~80 MB; 200 topics of one partition keep
/// 1 GB), and the clock runs from the first produced event to the last
/// commit. With `drain`, the workers are stopped as soon as they hold every
/// event, so they commit what they buffer at once (as on shutdown) and the
/// clock does not include the last batches' wait for `max_latency`.
async fn kafka_workers(
    args: &BenchArgs,
    workers: usize,
    drain: bool,
    encoder: Encoder,
    topics: &Topics,
    config: impl Fn(&str) -> Result<Config, CliError>,
) -> Result<KafkaRun, CliError> {
    let before_broker = bench_cpu::threads();
    let cluster = EmbeddedKafka::start_with(&topics.created).map_err(CliError::Demo)?;
    let mut rig = bench_cpu::new_rdkafka_threads(&before_broker, &bench_cpu::threads());
    let source = format!(
        "[[sources]]\nkind = \"kafka\"\nname = \"bench\"\nbrokers = \"{}\"\n{}\ngroup_id = \"bench\"",
        cluster.bootstrap_servers(),
        topics.subscription
    );
    let names: Vec<String> = topics.created.iter().map(|(t, _)| t.clone()).collect();
    let config = config(&source)?;
    let shutdown = CancellationToken::new();
    let mut runs = Vec::new();
    for _ in 0..workers {
        let stats = Arc::new(IngestStats::new());
        let (config, task_stats, shutdown) = (config.clone(), stats.clone(), shutdown.clone());
        let task =
            tokio::spawn(async move { crate::ingest::run(&config, shutdown, task_stats).await });
        runs.push((stats, task));
    }
    let all: Vec<Arc<IngestStats>> = runs.iter().map(|(s, _)| s.clone()).collect();
    let total = move |f: fn(&crate::telemetry::stats::StatsSnapshot) -> u64| -> u64 {
        all.iter().map(|s| f(&s.snapshot())).sum()
    };
    // Let the consumers join the group before the clock starts.
    tokio::time::sleep(Duration::from_secs(4 + 2 * workers as u64)).await;
    let retries_before =
        crate::telemetry::metrics::COMMIT_RETRIES.load(std::sync::atomic::Ordering::Relaxed);
    let rebases_before =
        crate::telemetry::metrics::COMMIT_REBASES.load(std::sync::atomic::Ordering::Relaxed);
    let before_producer = bench_cpu::threads();
    let producer = cluster
        .producer_lingering(args.linger_ms)
        .map_err(CliError::Demo)?;
    rig.extend(bench_cpu::new_rdkafka_threads(
        &before_producer,
        &bench_cpu::threads(),
    ));
    let count = args.events;
    let partitions: u64 = topics.created.iter().map(|(_, p)| *p as u64).sum();
    let ahead = AHEAD_PER_16_PARTITIONS * partitions.max(16) / 16;
    let started = Instant::now();
    let cpu_before = bench_cpu::process_seconds();
    let rig_before = bench_cpu::threads_seconds(&rig);
    let received = total.clone();
    let produced = tokio::task::spawn_blocking(move || -> Result<(u64, f64), String> {
        let producing_since = bench_cpu::this_thread_seconds();
        let mut events = RideEvents::new(1, 100_000, 0.0);
        let mut bytes = 0u64;
        for n in 0..count {
            // Stay within what the broker retains.
            while n >= received(|s| s.received) + ahead {
                std::thread::sleep(Duration::from_millis(2));
            }
            let event = events.next_event();
            let record = encoder.encode(&event.payload, event.valid);
            bytes += record.len() as u64;
            let topic = &names[n as usize % names.len()];
            broker::send(&producer, topic, &event.key, &record)?;
        }
        broker::flush(&producer)?;
        Ok((bytes, bench_cpu::this_thread_seconds() - producing_since))
    });
    let mut last = (0u64, Instant::now());
    loop {
        if drain
            && !shutdown.is_cancelled()
            && produced.is_finished()
            && total(|s| s.received) >= args.events
        {
            shutdown.cancel();
        }
        let committed = total(|s| s.committed);
        if committed >= args.events || runs.iter().any(|(_, t)| t.is_finished()) {
            break;
        }
        if committed != last.0 {
            last = (committed, Instant::now());
        } else if produced.is_finished() && last.1.elapsed() > Duration::from_secs(15) {
            tracing::warn!(
                committed,
                "no progress for 15s: the broker dropped records it could not retain"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = bench_cpu::process_seconds() - cpu_before;
    let rig_cpu = bench_cpu::threads_seconds(&rig) - rig_before;
    let (bytes, producing_cpu) = produced
        .await
        .map_err(|e| CliError::Demo(e.to_string()))?
        .map_err(CliError::Demo)?;
    shutdown.cancel();
    for (_, task) in runs {
        task.await.map_err(|e| CliError::Demo(e.to_string()))??;
    }
    let retries = crate::telemetry::metrics::COMMIT_RETRIES
        .load(std::sync::atomic::Ordering::Relaxed)
        - retries_before;
    let rebases = crate::telemetry::metrics::COMMIT_REBASES
        .load(std::sync::atomic::Ordering::Relaxed)
        - rebases_before;
    Ok(KafkaRun {
        measurement: Measurement {
            mode: args.mode,
            events: total(|s| s.committed),
            bytes,
            seconds,
            peak_rss_kib: 0,
            cpu_seconds: Some(cpu),
            rig_cpu_seconds: Some(rig_cpu + producing_cpu),
            fleet: None,
        },
        fleet: FleetFigures {
            workers,
            commits: total(|s| s.commits),
            commit_retries: retries,
            commit_rebases: rebases,
            fenced: total(|s| s.fenced),
        },
    })
}

/// `fleet`: `--workers` consumers of one group writing one table on the S3
/// server at `--s3-endpoint` (bucket `bench`).
async fn fleet(args: &BenchArgs) -> Result<Measurement, CliError> {
    let endpoint = args
        .s3_endpoint
        .clone()
        .ok_or_else(|| CliError::Usage("fleet needs --s3-endpoint".into()))?;
    let prefix = format!("run-{}", uuid::Uuid::new_v4());
    let run = kafka_workers(args, args.workers, false, Encoder::Json, &single_topic(), |source| {
        let text = format!(
            "[lake]\nroot = \"s3://bench/{prefix}\"\nstorage_options = {{ aws_endpoint = \"{endpoint}\", aws_access_key_id = \"bench\", aws_secret_access_key = \"bench\", aws_region = \"us-east-1\", aws_allow_http = \"true\" }}\n\n[batching]\nmax_latency = \"2s\"\n[maintenance]\nenabled = false\n[erasure]\nenabled = false\n\n{source}\n\n[[tables]]\nname = \"rides\"\nsource = \"bench\"\n{RIDES_TABLE_COLUMNS}"
        );
        let config = Config::parse(&text, "bench config")?;
        config.validate()?;
        Ok(config)
    })
    .await?;
    Ok(Measurement {
        fleet: Some(run.fleet),
        ..run.measurement
    })
}

/// Peak resident set size of this process (Linux `VmHWM`), in KiB.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
