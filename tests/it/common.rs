//! Shared helpers: lakes in temp dirs, configs, the embedded broker, ingest
//! runs in tasks, and independent reads through `delta_kernel`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, RecordBatch, StringArray};
use delta_kernel::engine::arrow_data::ArrowEngineData;
use delta_kernel::{Engine, Snapshot};
use delta_kernel_default_engine::DefaultEngineBuilder;
use sluice::config::Config;
use sluice::demo::broker::{self, EmbeddedKafka};
use sluice::ingest::budget::MemoryBudget;
use sluice::telemetry::stats::IngestStats;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Columns of the small test table.
pub const EVENT_COLUMNS: &str = r#"
key = "user_id"
columns = [
  { name = "event_id", type = "string", nullable = false },
  { name = "user_id", type = "string", nullable = false },
  { name = "amount", type = "double" },
  { name = "event_time", type = "timestamp" },
]
"#;

/// A lake in a temp dir.
pub struct Lake {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
}

impl Lake {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn root(&self) -> String {
        self.dir.path().display().to_string()
    }

    pub fn table(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A Kafka config for the `events` table.
pub fn kafka_config(
    lake: &Lake,
    brokers: &str,
    topic: &str,
    group: &str,
    batching: &str,
    extra_table: &str,
) -> Config {
    let text = format!(
        r#"
[lake]
root = "{root}"

[batching]
{batching}

[[sources]]
kind = "kafka"
name = "k"
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "{group}"
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}

[[tables]]
name = "events"
source = "k"
{extra_table}
{EVENT_COLUMNS}
"#,
        root = lake.root()
    );
    parse_valid(&text)
}

pub fn parse_valid(text: &str) -> Config {
    let config = Config::parse(text, "test").expect("test config parses");
    config.validate().expect("test config is valid");
    config
}

/// A file-source config for a table named `name` with the given columns.
pub fn file_config(lake: &Lake, path: &Path, name: &str, batching: &str, table: &str) -> Config {
    let text = format!(
        r#"
[lake]
root = "{root}"

[batching]
{batching}

[[sources]]
kind = "file"
name = "files"
path = "{path}"

[[tables]]
name = "{name}"
source = "files"
{table}
"#,
        root = lake.root(),
        path = path.display()
    );
    parse_valid(&text)
}

/// An ingest run in a background task.
pub struct Running {
    pub stats: Arc<IngestStats>,
    pub budget: Arc<MemoryBudget>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), sluice::ingest::IngestError>>,
}

impl Running {
    pub fn start(config: &Config) -> Self {
        let stats = Arc::new(IngestStats::new());
        let budget = Arc::new(MemoryBudget::new(config.batching.memory_budget.as_usize()));
        let shutdown = CancellationToken::new();
        let task = {
            let (config, stats, budget, shutdown) = (
                config.clone(),
                stats.clone(),
                budget.clone(),
                shutdown.clone(),
            );
            tokio::spawn(async move {
                sluice::ingest::run_with_budget(&config, shutdown, stats, budget).await
            })
        };
        Self {
            stats,
            budget,
            shutdown,
            task,
        }
    }

    /// Waits (up to `limit`) until `done` holds for the counters.
    pub async fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        done: impl Fn(&sluice::telemetry::stats::StatsSnapshot) -> bool,
    ) {
        let result = tokio::time::timeout(limit, async {
            loop {
                if done(&self.stats.snapshot()) {
                    return;
                }
                if self.task.is_finished() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            result.is_ok(),
            "timed out waiting for {what}; stats: {:?}",
            self.stats.snapshot()
        );
    }

    /// Graceful stop: cancel and wait for the drain.
    pub async fn stop(self) -> sluice::telemetry::stats::StatsSnapshot {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("ingest stops within the grace period")
            .expect("ingest task did not panic")
            .expect("ingest ended without error");
        self.stats.snapshot()
    }

    /// Waits for a finite (file) source to be drained and committed.
    pub async fn finish(self) -> sluice::telemetry::stats::StatsSnapshot {
        tokio::time::timeout(Duration::from_secs(120), self.task)
            .await
            .expect("a file source ends by itself")
            .expect("ingest task did not panic")
            .expect("ingest ended without error");
        self.stats.snapshot()
    }

    /// Crash: drop the pipeline tasks without flushing.
    pub async fn kill(self) -> sluice::telemetry::stats::StatsSnapshot {
        self.task.abort();
        let _ = self.task.await;
        // Give the source thread a moment to notice its pipeline is gone.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.stats.snapshot()
    }
}

/// Produces `count` JSON events `e-<prefix>-<n>` to `topic`; every `bad_every`-th is malformed.
pub fn produce(
    kafka: &EmbeddedKafka,
    topic: &str,
    prefix: &str,
    count: usize,
    bad_every: usize,
) -> Vec<String> {
    let producer = kafka.producer().expect("producer");
    let mut good = Vec::new();
    for n in 0..count {
        let id = format!("e-{prefix}-{n}");
        let user = format!("u-{}", n % 97);
        let payload = if bad_every > 0 && n % bad_every == bad_every - 1 {
            format!(r#"{{"event_id":"{id}","user_id":"{user}","amount":"lots"}}"#)
        } else {
            good.push(id.clone());
            format!(
                r#"{{"event_id":"{id}","user_id":"{user}","amount":{}.5,"event_time":"2024-05-01T12:00:{:02}Z"}}"#,
                n % 1000,
                n % 60
            )
        };
        broker::send(&producer, topic, &user, payload.as_bytes()).expect("send");
    }
    broker::flush(&producer).expect("flush");
    good
}

/// Reads every row of the table through `delta_kernel` (the Delta maintainers' reader).
pub async fn kernel_read(table: &Path) -> Vec<RecordBatch> {
    let table = table.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let url = url::Url::from_directory_path(table.canonicalize().expect("table exists"))
            .expect("directory url");
        let store = Arc::new(object_store::local::LocalFileSystem::new());
        let engine: Arc<dyn Engine> = Arc::new(DefaultEngineBuilder::new(store).build());
        let snapshot = Snapshot::builder_for(url.as_str())
            .build(engine.as_ref())
            .expect("kernel snapshot");
        let scan = snapshot.scan_builder().build().expect("kernel scan");
        scan.execute(engine.clone())
            .expect("kernel execute")
            .map(|data| {
                let data = data.expect("kernel data");
                ArrowEngineData::try_from_engine_data(data)
                    .expect("arrow data")
                    .record_batch()
                    .clone()
            })
            .collect()
    })
    .await
    .expect("kernel read task")
}

/// All values of a string column across batches.
pub fn strings(batches: &[RecordBatch], column: &str) -> Vec<String> {
    let mut out = Vec::new();
    for batch in batches {
        let array = batch
            .column_by_name(column)
            .unwrap_or_else(|| panic!("column {column} in {:?}", batch.schema()));
        let array = arrow::compute::cast(array, &arrow::datatypes::DataType::Utf8).expect("cast");
        let strings = array
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("strings");
        out.extend((0..strings.len()).map(|i| strings.value(i).to_string()));
    }
    out
}

/// Asserts every expected id appears exactly once and nothing else does.
pub fn assert_exactly_once(mut actual: Vec<String>, expected: &[String]) {
    let total = actual.len();
    actual.sort();
    let mut duplicates: Vec<&String> = actual
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| &w[0])
        .collect();
    duplicates.dedup();
    assert!(
        duplicates.is_empty(),
        "{} duplicated ids, e.g. {:?}",
        duplicates.len(),
        &duplicates[..duplicates.len().min(5)]
    );
    let mut expected_sorted = expected.to_vec();
    expected_sorted.sort();
    let missing: Vec<&String> = expected_sorted
        .iter()
        .filter(|id| actual.binary_search(id).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} ids missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(total, expected.len(), "row count");
}

/// Registers a table for the Spark check run by `scripts/test` (when enabled).
pub fn register_for_spark(table: &Path, name: &str, expected_rows: usize) {
    register_for_spark_with(table, name, expected_rows, serde_json::json!({}));
}

/// Registers a table for the Spark check with more to check: `types`
/// (column -> Spark's `simpleString`) and `comments` (column -> comment),
/// as Spark reads them from the Delta schema.
pub fn register_for_spark_with(
    table: &Path,
    name: &str,
    expected_rows: usize,
    checks: serde_json::Value,
) {
    let Ok(dir) = std::env::var("SLUICE_SPARK_CHECK_DIR") else {
        return;
    };
    let target = Path::new(&dir).join(name);
    let _ = std::fs::remove_dir_all(&target);
    copy_dir(table, &target);
    let mut line = serde_json::json!({"table": target, "expected_rows": expected_rows});
    if let (Some(line), Some(checks)) = (line.as_object_mut(), checks.as_object()) {
        line.extend(checks.clone());
    }
    use std::io::Write;
    let mut manifest = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(Path::new(&dir).join("manifest.jsonl"))
        .expect("manifest");
    writeln!(manifest, "{line}").expect("manifest write");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).expect("copy");
        }
    }
}

/// Starts an embedded broker with a fresh topic.
pub fn kafka(topic: &str, partitions: i32) -> EmbeddedKafka {
    EmbeddedKafka::start(topic, partitions).expect("embedded kafka")
}

/// Storage options for local tables.
pub fn no_options() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// The live `add` actions of a table's log by path (JSON commits only:
/// for tables that stay below their first checkpoint).
pub fn live_adds(table: &Path) -> BTreeMap<String, serde_json::Value> {
    let mut commits: Vec<_> = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    commits.sort();
    let mut live = BTreeMap::new();
    for commit in commits {
        for line in std::fs::read_to_string(commit).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(add) = action.get("add") {
                live.insert(add["path"].as_str().unwrap().to_string(), add.clone());
            } else if let Some(remove) = action.get("remove") {
                live.remove(remove["path"].as_str().unwrap());
            }
        }
    }
    live
}

/// The rows `delta_kernel` reads from a table.
pub async fn kernel_rows(table: &Path) -> usize {
    kernel_read(table).await.iter().map(|b| b.num_rows()).sum()
}

/// Opens a table at its latest version.
pub async fn load(table: &Path) -> deltalake::DeltaTable {
    let url = sluice::table::resolve_existing(&table.display().to_string()).unwrap();
    sluice::table::open(&url, &no_options()).await.unwrap()
}

/// Runs a config whose sources are finite (files) to the end.
pub async fn ingest_to_end(config: &Config) -> sluice::telemetry::stats::StatsSnapshot {
    Running::start(config).finish().await
}

/// The actions of every JSON commit in the table's log whose `commitInfo.operation` is `operation`.
pub fn commits_with_operation(table: &Path, operation: &str) -> Vec<Vec<serde_json::Value>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let actions: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if actions
            .iter()
            .any(|a| a["commitInfo"]["operation"] == operation)
        {
            found.push(actions);
        }
    }
    found
}

/// Paths of the table's live files at its latest version.
pub async fn live_paths(table: &Path) -> std::collections::BTreeSet<String> {
    load(table)
        .await
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .map(|f| f.path().to_string())
        .collect()
}

/// Waits (up to `limit`) until the table at `url` holds at least `rows`
/// rows by its file statistics (a table not created yet holds none).
pub async fn wait_for_rows(
    url: &url::Url,
    options: &BTreeMap<String, String>,
    rows: u64,
    limit: Duration,
) {
    let started = std::time::Instant::now();
    loop {
        let held: u64 = match sluice::table::open(url, options).await {
            Ok(table) => table
                .snapshot()
                .unwrap()
                .log_data()
                .iter()
                .map(|f| f.num_records().unwrap_or(0) as u64)
                .sum(),
            Err(_) => 0,
        };
        if held >= rows {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{url}: only {held} of {rows} rows"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Every file below `root`.
pub fn files_under(root: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Logs to the test's output when `SLUICE_TEST_LOG` is set (e.g. `sluice=debug`).
pub fn test_log() {
    if let Ok(filter) = std::env::var("SLUICE_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// `sluice status` of `table` names its schemas by registry subject and
/// version: v1 and v2 of `subject` taken, v3 refused.
pub async fn assert_status_names_schemas(table: &Path, subject: &str) {
    let url = url::Url::from_directory_path(table).unwrap();
    let status = sluice::status::table_status(&url, &Default::default(), 1 << 20)
        .await
        .unwrap();
    let text = sluice::cli::status::render(&status);
    for (version, line) in [
        ("v1", "schemas"),
        ("v2", "schemas"),
        ("v3", "refused schemas"),
    ] {
        let wanted = format!("{subject} {version} (id ");
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(line) && l.contains(&wanted)),
            "{wanted} under {line} in\n{text}"
        );
    }
}

/// Two workers ingest `topic` into `config`'s table; after their first
/// commits one is killed without a drain and a third joins, while 8,000
/// events are produced in three waves. Returns the good event ids and the
/// two running workers (stop them once the rows have landed).
pub async fn crash_and_replace(
    kafka: &EmbeddedKafka,
    topic: &str,
    config: &Config,
) -> (Vec<String>, Running, Running) {
    let mut good = produce(kafka, topic, "one", 3000, 0);
    let a = Running::start(config);
    let b = Running::start(config);
    a.wait_for(Duration::from_secs(60), "first commits", |s| s.commits >= 1)
        .await;
    b.wait_for(Duration::from_secs(60), "first commits", |s| s.commits >= 1)
        .await;
    good.extend(produce(kafka, topic, "two", 3000, 0));
    // Kill A without a drain: whatever it buffered is lost to it, not to the table.
    a.kill().await;
    let c = Running::start(config);
    good.extend(produce(kafka, topic, "three", 2000, 0));
    (good, b, c)
}

/// A free loopback port: bound, then released for a server to take.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to 30 s for `what` to accept connections on loopback `port`.
pub fn wait_for_port(port: u16, what: &str) {
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every value of the long column `id` in the table's live files, read
/// from their bytes (deletion vectors ignored: rows they hide included).
pub async fn raw_ids(table: &Path) -> Vec<i64> {
    use arrow::array::AsArray;
    let mut out = Vec::new();
    for path in live_paths(table).await {
        let file = std::fs::File::open(table.join(&path)).unwrap();
        let builder =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let mask = parquet::arrow::ProjectionMask::columns(builder.parquet_schema(), ["id"]);
        for batch in builder.with_projection(mask).build().unwrap() {
            let batch = batch.unwrap();
            let ids = batch
                .column(0)
                .as_primitive::<arrow::datatypes::Int64Type>();
            out.extend(ids.values().iter());
        }
    }
    out
}

/// The sum of a field of the merges' lineage (`commitInfo.sluice.merge`).
pub fn merge_sums(table: &Path, field: &str) -> u64 {
    commits_with_operation(table, "STREAMING UPDATE")
        .iter()
        .flatten()
        .filter_map(|a| a["commitInfo"]["sluice"]["merge"][field].as_u64())
        .sum()
}
