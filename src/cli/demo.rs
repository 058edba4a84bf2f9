//! `sluice demo`: the embedded default. Starts an in-process Kafka broker,
//! produces ride-hailing events (with a few malformed ones) for a while, runs
//! the real ingest path into `./lake/rides` with a short flush interval, and
//! prints a summary. Needs no external service.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::CliError;
use crate::config::Config;
use crate::demo::broker::{self, EmbeddedKafka};
use crate::demo::encode::{DemoFormat, Encoder};
use crate::demo::events::{RideEvents, RIDES_TABLE_COLUMNS};
use crate::telemetry::stats::IngestStats;

/// Arguments of `sluice demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How long to produce events.
    #[arg(long, default_value = "75s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Events produced per second.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Lake directory (tables go to LAKE/rides and LAKE/rides_dead_letters).
    #[arg(long, default_value = "./lake")]
    pub lake: PathBuf,
    /// Flush interval (max_latency): short, so the run leaves many small commits.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub flush: Duration,
    /// Partitions of the demo topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Share of malformed records.
    #[arg(long, default_value_t = 0.005)]
    pub bad_ratio: f64,
    /// Distinct riders.
    #[arg(long, default_value_t = 20_000)]
    pub users: u64,
    /// Record encoding: JSON (columns declared in the config), or Avro /
    /// Protobuf (the table typed from the shipped schema).
    #[arg(long, value_enum, default_value = "json")]
    pub format: DemoFormat,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
}

/// The demo table's keys when its schema comes from the source's format.
const SCHEMA_TYPED_TABLE: &str = r#"key = "user_id"
partition_by = ["date"]
derived = [{ name = "date", from = "event_time", transform = "date" }]
"#;

/// The demo config: one Kafka source into the `rides` table; `format_keys`
/// are the source's format keys (none for JSON, whose table declares its
/// columns).
pub fn demo_config(
    lake: &str,
    brokers: &str,
    topic: &str,
    flush: Duration,
    format_keys: &str,
) -> String {
    let table = if format_keys.is_empty() {
        RIDES_TABLE_COLUMNS
    } else {
        SCHEMA_TYPED_TABLE
    };
    format!(
        r#"# Written by `sluice demo`: the config it ran with.
[lake]
root = "{lake}"

[batching]
max_latency = "{flush}"
memory_budget = "256MiB"
shutdown_grace = "30s"

[[sources]]
kind = "kafka"
name = "demo"
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "sluice-demo"
{format_keys}

[[tables]]
name = "rides"
source = "demo"
metadata_columns = ["source_partition", "source_position", "ingest_time"]
{table}"#,
        flush = humantime::format_duration(flush),
    )
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<(), CliError> {
    let demo_error = |e: String| CliError::Demo(e);
    let lake = std::fs::create_dir_all(&args.lake)
        .and_then(|_| args.lake.canonicalize())
        .map_err(|e| CliError::Usage(format!("--lake {}: {e}", args.lake.display())))?;
    let lake_text = lake.display().to_string();
    let topic = format!("rides-{}", chrono::Utc::now().format("%Y%m%d%H%M%S"));
    let kafka = EmbeddedKafka::start(&topic, args.partitions).map_err(demo_error)?;
    let (encoder, format_keys) = Encoder::new(args.format, &lake).map_err(demo_error)?;
    let config_text = demo_config(
        &lake_text,
        kafka.bootstrap_servers(),
        &topic,
        args.flush,
        &format_keys,
    );
    std::fs::write(lake.join("demo.toml"), &config_text)?;
    let config = Config::parse(&config_text, "demo config")?;
    config.validate()?;

    let total = args.rate * args.duration.as_secs().max(1);
    eprintln!(
        "sluice demo: embedded Kafka at {}, topic {topic} ({} partitions); producing {total} ride events ({:?}) at {}/s into {}",
        kafka.bootstrap_servers(),
        args.partitions,
        args.format,
        args.rate,
        lake.join("rides").display()
    );
    let produced = Arc::new(AtomicU64::new(0));
    let malformed = Arc::new(AtomicU64::new(0));
    let producer_done = Arc::new(AtomicBool::new(false));
    let producer = kafka.producer().map_err(demo_error)?;
    let producer_thread = {
        let (produced, malformed, done) =
            (produced.clone(), malformed.clone(), producer_done.clone());
        let (rate, topic, bad_ratio, users) =
            (args.rate, topic.clone(), args.bad_ratio, args.users);
        std::thread::spawn(move || -> Result<(), String> {
            let mut events = RideEvents::new(rand::random(), users, bad_ratio);
            let started = Instant::now();
            for n in 0..total {
                let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let event = events.next_event();
                let record = encoder.encode(&event.payload, event.valid);
                broker::send(&producer, &topic, &event.key, &record)?;
                if !event.valid {
                    malformed.fetch_add(1, Ordering::Relaxed);
                }
                produced.fetch_add(1, Ordering::Relaxed);
            }
            let result = broker::flush(&producer);
            done.store(true, Ordering::Relaxed);
            result
        })
    };

    let stats = Arc::new(IngestStats::new());
    let shutdown = CancellationToken::new();
    let signals = super::shutdown_on_signals();
    let ingest = {
        let (stats, shutdown) = (stats.clone(), shutdown.clone());
        tokio::spawn(async move { crate::ingest::run(&config, shutdown, stats).await })
    };

    let bar = super::progress_bar(total, "{pos}/{len} produced | {msg}");
    let started = Instant::now();
    let plain = !std::io::stderr().is_terminal();
    let mut last_line = Instant::now();
    let mut drained_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = signals.cancelled() => break,
        }
        if ingest.is_finished() {
            break;
        }
        let s = stats.snapshot();
        let line = format!(
            "committed {} | dead letters {} | commits {} | version {}",
            s.committed, s.dead_lettered, s.commits, s.last_version
        );
        bar.set_position(produced.load(Ordering::Relaxed));
        if plain && last_line.elapsed() >= Duration::from_secs(10) {
            last_line = Instant::now();
            eprintln!(
                "{:>4.0?} produced {}/{total} | {line}",
                started.elapsed(),
                produced.load(Ordering::Relaxed)
            );
        }
        bar.set_message(line);
        if producer_done.load(Ordering::Relaxed) {
            let all_in = s.committed + s.dead_lettered >= produced.load(Ordering::Relaxed);
            let since = *drained_since.get_or_insert_with(Instant::now);
            if all_in || since.elapsed() > args.flush * 5 + Duration::from_secs(30) {
                break;
            }
        }
    }
    bar.finish_and_clear();
    shutdown.cancel();
    let ingest_result = ingest
        .await
        .map_err(|e| demo_error(format!("ingest task: {e}")))?;
    producer_done.store(true, Ordering::Relaxed);
    let producer_result = producer_thread
        .join()
        .map_err(|_| demo_error("producer thread panicked".into()))?;
    ingest_result?;
    producer_result.map_err(demo_error)?;
    drop(kafka);

    let s = stats.snapshot();
    let table_path = lake.join("rides");
    let url = crate::table::resolve_existing(&table_path.display().to_string())?;
    let status = crate::status::table_status(&url, &Default::default(), u64::MAX).await?;
    let produced = produced.load(Ordering::Relaxed);
    println!("\nsluice demo finished in {:.0?}", started.elapsed());
    println!(
        "  events produced   {produced} ({} malformed)",
        malformed.load(Ordering::Relaxed)
    );
    println!("  rows committed    {}", s.committed);
    println!(
        "  dead letters      {} -> {}",
        s.dead_lettered,
        lake.join("rides_dead_letters").display()
    );
    println!(
        "  commits           {} (this run; {} batches fenced)",
        s.commits, s.fenced
    );
    let missing = produced.saturating_sub(s.committed + s.dead_lettered);
    if missing > 0 {
        println!(
            "  NOT INGESTED      {missing} events: the embedded broker keeps only 5 MB per partition and \
             dropped them before sluice read them; lower --rate or raise --partitions"
        );
    }
    println!(
        "  table             {} at version {}: {} files, {}, {} rows in total",
        table_path.display(),
        status.version,
        status.files,
        crate::config::ByteSize(status.bytes),
        status.rows
    );
    println!("  config used       {}", lake.join("demo.toml").display());
    if let Some(path) = &args.summary_json {
        let summary = serde_json::json!({
            "table": table_path,
            "produced": produced,
            "malformed": malformed.load(Ordering::Relaxed),
            "committed": s.committed,
            "dead_lettered": s.dead_lettered,
            "commits": s.commits,
            "version": status.version,
            "files": status.files,
        });
        std::fs::write(path, serde_json::to_string_pretty(&summary).expect("json"))?;
    }
    println!("\nRead it:");
    println!(
        "  cargo run -- status {}    (or `sluice status ...` after `cargo install --path .`)",
        table_path.display()
    );
    println!(
        "  duckdb -c \"SELECT city, count(*) FROM delta_scan('{}') GROUP BY ALL\"",
        table_path.display()
    );
    println!(
        "  python -c \"import polars as pl; print(pl.read_delta('{}').group_by('city').len())\"",
        table_path.display()
    );
    println!(
        "  pyspark (delta-spark): spark.read.format('delta').load('{}')",
        table_path.display()
    );
    Ok(())
}
