//! Kinesis through a real Kinesis API server (kinesalite, from npm, started
//! here on 127.0.0.1): a stream resharded before and during ingestion lands
//! exactly once with parent shards before their children per key; two
//! workers share the shards through leases across a crash; bad endpoints
//! and missing credentials fail fast naming the key.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::array::{Array, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
use aws_sdk_kinesis::Client;

use crate::common::*;

/// A kinesalite server on a free loopback port, stopped on drop.
pub struct Kinesalite {
    child: Child,
    pub endpoint: String,
}

impl Kinesalite {
    pub fn start() -> Self {
        let dir = std::env::var("SLUICE_KINESALITE_DIR").unwrap_or_else(|_| {
            format!(
                "{}/.cache/sluice-kinesalite",
                std::env::var("HOME").unwrap()
            )
        });
        let modules = Path::new(&dir).join("node_modules");
        assert!(
            modules.join("kinesalite").exists(),
            "no kinesalite under {dir}: run scripts/test, which installs it (or set SLUICE_KINESALITE_DIR)"
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kinesalite.js");
        let mut child = Command::new("node")
            .arg(script)
            .env("NODE_PATH", &modules)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kinesalite");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("kinesalite said {line:?}"));
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Moves kinesalite's clock 25 hours ahead (`scripts/kinesalite.js`):
    /// every record put so far is then past the stream's retention, and
    /// kinesalite trims it as Kinesis would.
    pub async fn age_past_retention(&self) {
        let status = Command::new("kill")
            .args(["-USR2", &self.child.id().to_string()])
            .status()
            .expect("signal kinesalite");
        assert!(status.success());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    pub fn client(&self) -> Client {
        let config = aws_sdk_kinesis::Config::builder()
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .build();
        Client::from_conf(config)
    }

    /// The `[[sources]]` entry for `stream`.
    pub fn source(&self, name: &str, stream: &str) -> String {
        format!(
            r#"
[[sources]]
kind = "kinesis"
name = "{name}"
stream = "{stream}"
region = "us-east-1"
endpoint = "{endpoint}"
access_key_id = "test"
secret_access_key = "test"
lease_ttl = "5s"
"#,
            endpoint = self.endpoint
        )
    }
}

impl Drop for Kinesalite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn create_stream(client: &Client, stream: &str, shards: i32) {
    client
        .create_stream()
        .stream_name(stream)
        .shard_count(shards)
        .send()
        .await
        .unwrap();
    wait_active(client, stream).await;
}

async fn wait_active(client: &Client, stream: &str) {
    let started = Instant::now();
    loop {
        let described = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .unwrap();
        let summary = described.stream_description_summary().unwrap();
        if summary.stream_status() == &StreamStatus::Active {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "stream not active"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Puts `per_key` events for each of `keys` users, each user's events in
/// order (its `amount` counts up from `first`), one `PutRecords` call per
/// round so a user's events keep their order within a shard. Returns the ids.
pub async fn put_events(
    client: &Client,
    stream: &str,
    phase: &str,
    keys: usize,
    per_key: usize,
    first: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for n in first..first + per_key {
        let mut entries = Vec::new();
        for k in 0..keys {
            let id = format!("e-{phase}-{k}-{n}");
            let payload = format!(
                r#"{{"event_id":"{id}","user_id":"u-{k}","amount":{n},"event_time":"2024-05-01T12:00:00Z"}}"#
            );
            entries.push(
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(payload))
                    .partition_key(format!("u-{k}"))
                    .build()
                    .unwrap(),
            );
            ids.push(id);
        }
        let put = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await
            .unwrap();
        assert_eq!(put.failed_record_count(), Some(0));
    }
    ids
}

/// Splits the first open shard at the middle of its hash range; returns its id.
pub async fn split_an_open_shard(client: &Client, stream: &str) -> String {
    let shards = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    let open = shards
        .shards()
        .iter()
        .find(|s| {
            s.sequence_number_range()
                .is_some_and(|r| r.ending_sequence_number().is_none())
        })
        .expect("an open shard");
    let range = open.hash_key_range().unwrap();
    let low: u128 = range.starting_hash_key().parse().unwrap();
    let high: u128 = range.ending_hash_key().parse().unwrap();
    client
        .split_shard()
        .stream_name(stream)
        .shard_to_split(open.shard_id())
        .new_starting_hash_key((low + (high - low) / 2).to_string())
        .send()
        .await
        .unwrap();
    wait_active(client, stream).await;
    open.shard_id().to_string()
}

/// Waits until the lake's `orders` table holds `rows` rows; its path and URL.
async fn wait_for_orders(lake: &Lake, rows: usize, seconds: u64) -> (std::path::PathBuf, url::Url) {
    let table = lake.table("orders");
    let url = sluice::table::resolve_existing(table.to_str().unwrap()).unwrap();
    wait_for_rows(
        &url,
        &no_options(),
        rows as u64,
        Duration::from_secs(seconds),
    )
    .await;
    (table, url)
}

fn config(lake: &Lake, kinesis: &Kinesalite, stream: &str) -> sluice::config::Config {
    config_starting(lake, kinesis, stream, "earliest")
}

fn config_starting(
    lake: &Lake,
    kinesis: &Kinesalite,
    stream: &str,
    start_from: &str,
) -> sluice::config::Config {
    orders_config(
        lake,
        kinesis,
        stream,
        &format!("start_from = \"{start_from}\""),
        r#"metadata_columns = ["source_partition", "source_position", "ingest_time"]"#,
    )
}

/// The `orders` table fed by Kinesis source `k` on `stream`;
/// `source_extra` and `table_extra` add keys to each.
pub fn orders_config(
    lake: &Lake,
    kinesis: &Kinesalite,
    stream: &str,
    source_extra: &str,
    table_extra: &str,
) -> sluice::config::Config {
    parse_valid(&format!(
        r#"
[lake]
root = "{root}"
[batching]
max_latency = "300ms"
[maintenance]
enabled = false
[erasure]
enabled = false
{source}{source_extra}
[[tables]]
name = "orders"
source = "k"
{table_extra}
{EVENT_COLUMNS}
"#,
        root = lake.root(),
        source = kinesis.source("k", stream),
    ))
}

/// One key's rows by shard: (position, amount, ingest time).
type ShardRows = BTreeMap<String, Vec<(i64, f64, i64)>>;

/// Per key, in each shard, `amount` rises with the position; and every row a
/// parent shard holds for a key was ingested no later than any row of that
/// key in a child shard.
fn assert_parent_first(batches: &[RecordBatch], parents: &HashMap<String, Vec<String>>) {
    let mut rows: BTreeMap<String, ShardRows> = BTreeMap::new();
    for batch in batches {
        let column = |name: &str| batch.column_by_name(name).unwrap().clone();
        let users = column("user_id");
        let users = users.as_any().downcast_ref::<StringArray>().unwrap();
        let shards = column("_source_partition");
        let shards = shards.as_any().downcast_ref::<StringArray>().unwrap();
        let positions = column("_source_position");
        let positions = positions.as_any().downcast_ref::<Int64Array>().unwrap();
        let amounts = column("amount");
        let amounts = amounts.as_any().downcast_ref::<Float64Array>().unwrap();
        let times = column("_ingest_time");
        let times = times
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        for i in 0..batch.num_rows() {
            rows.entry(users.value(i).to_string())
                .or_default()
                .entry(shards.value(i).to_string())
                .or_default()
                .push((positions.value(i), amounts.value(i), times.value(i)));
        }
    }
    let mut checked_pairs = 0;
    for (user, by_shard) in &rows {
        for (shard, list) in by_shard {
            let mut list = list.clone();
            list.sort_by_key(|r| r.0);
            assert!(
                list.windows(2).all(|w| w[0].1 < w[1].1),
                "{user} in {shard}: amounts out of order"
            );
            for parent in parents.get(shard).into_iter().flatten() {
                if let Some(before) = by_shard.get(parent) {
                    let parent_last = before.iter().map(|r| r.2).max().unwrap();
                    let child_first = list.iter().map(|r| r.2).min().unwrap();
                    assert!(
                        parent_last <= child_first,
                        "{user}: child {shard} ingested before parent {parent}"
                    );
                    let parent_amount = before.iter().map(|r| r.1 as i64).max().unwrap();
                    let child_amount = list.iter().map(|r| r.1 as i64).min().unwrap();
                    assert!(
                        parent_amount < child_amount,
                        "{user}: parent/child amounts overlap"
                    );
                    checked_pairs += 1;
                }
            }
        }
    }
    assert!(checked_pairs > 0, "no key spans a parent and a child shard");
}

async fn parents_of(client: &Client, stream: &str) -> HashMap<String, Vec<String>> {
    let shards = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    shards
        .shards()
        .iter()
        .map(|s| {
            let parents = [s.parent_shard_id(), s.adjacent_parent_shard_id()]
                .into_iter()
                .flatten()
                .map(str::to_string)
                .collect();
            (s.shard_id().to_string(), parents)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_during_ingestion_is_exactly_once_and_parent_first() {
    let kinesis = Kinesalite::start();
    let client = kinesis.client();
    let stream = "orders";
    create_stream(&client, stream, 2).await;
    // A backlog, a split before the worker starts, more records (into the children).
    let mut expected = put_events(&client, stream, "a", 30, 8, 0).await;
    split_an_open_shard(&client, stream).await;
    expected.extend(put_events(&client, stream, "b", 30, 8, 8).await);

    let lake = Lake::new();
    let running = Running::start(&config(&lake, &kinesis, stream));
    running
        .wait_for(Duration::from_secs(60), "first commits", |s| {
            s.committed > 0
        })
        .await;
    // Split again while the worker reads, and keep producing.
    split_an_open_shard(&client, stream).await;
    expected.extend(put_events(&client, stream, "c", 30, 8, 16).await);
    let total = expected.len() as u64;
    running
        .wait_for(Duration::from_secs(120), "every record", |s| {
            s.committed >= total
        })
        .await;
    // Idle: the lag falls to zero on every shard still held (the open ones).
    let started = Instant::now();
    loop {
        let held = running.stats.partitions();
        let caught_up = |p: &sluice::telemetry::stats::PartitionProgress| {
            p.lag_records() == Some(0) && p.behind_ms == Some(0)
        };
        if held.len() == 4 && held.values().all(caught_up) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{held:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = running.stop().await;
    assert_eq!(stats.committed, total);
    assert_eq!(stats.fenced, 0);

    let table = lake.table("orders");
    let batches = kernel_read(&table).await;
    assert_exactly_once(strings(&batches, "event_id"), &expected);
    assert_parent_first(&batches, &parents_of(&client, stream).await);
    let url = sluice::table::resolve_existing(table.to_str().unwrap()).unwrap();
    let status = sluice::status::table_status(&url, &no_options(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(
        status.partitions.len(),
        6,
        "two shards, two splits: six shards"
    );
    for p in &status.partitions {
        assert!(p.contiguous && p.counts_add_up, "{p:?}");
    }
    register_for_spark(&table, "kinesis_resharded", expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_at_latest_skips_the_backlog_but_not_the_children() {
    let kinesis = Kinesalite::start();
    let client = kinesis.client();
    let stream = "latest";
    create_stream(&client, stream, 1).await;
    let backlog = put_events(&client, stream, "old", 10, 3, 0).await;
    let lake = Lake::new();
    let config = config_starting(&lake, &kinesis, stream, "latest");
    let running = Running::start(&config);
    // The shard's reader has made its first call, at the tip.
    let started = Instant::now();
    while !running
        .stats
        .partitions()
        .values()
        .any(|p| p.behind_ms.is_some())
    {
        assert!(started.elapsed() < Duration::from_secs(60), "never read");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut expected = put_events(&client, stream, "a", 10, 3, 3).await;
    // Split at once: the children receive records before the parent is
    // finished, and must be read from their first record, not their tip.
    split_an_open_shard(&client, stream).await;
    expected.extend(put_events(&client, stream, "b", 10, 3, 6).await);
    let (table, _) = wait_for_orders(&lake, expected.len(), 60).await;
    let stats = running.stop().await;
    assert_eq!(stats.committed, expected.len() as u64);
    let ids = strings(&kernel_read(&table).await, "event_id");
    assert!(backlog.iter().all(|id| !ids.contains(id)), "backlog read");
    assert_exactly_once(ids, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_shards_and_a_crash_loses_nothing() {
    let kinesis = Kinesalite::start();
    let client = kinesis.client();
    let stream = "shared";
    create_stream(&client, stream, 4).await;
    let mut expected = put_events(&client, stream, "a", 40, 5, 0).await;
    let lake = Lake::new();
    let config = config(&lake, &kinesis, stream);
    let first = Running::start(&config);
    let second = Running::start(&config);
    let started = Instant::now();
    // Both take a share of the four shards.
    loop {
        let (a, b) = (
            first.stats.partitions().len(),
            second.stats.partitions().len(),
        );
        if a > 0 && b > 0 && a + b == 4 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "shards not shared: {a} + {b} (worker tasks ended: {}, {})",
            first.task.is_finished(),
            second.task.is_finished()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    second
        .wait_for(Duration::from_secs(60), "a commit", |s| s.committed > 0)
        .await;
    expected.extend(put_events(&client, stream, "b", 40, 5, 5).await);
    second.kill().await;
    expected.extend(put_events(&client, stream, "c", 40, 5, 10).await);
    // The survivor takes the crashed worker's shards once their leases lapse.
    let (table, url) = wait_for_orders(&lake, expected.len(), 90).await;
    assert_eq!(
        first.stats.partitions().len(),
        4,
        "the survivor holds every shard"
    );
    first.stop().await;
    assert_exactly_once(strings(&kernel_read(&table).await, "event_id"), &expected);

    // Vacuum drops the position sidecars below each shard's recorded
    // position; a worker started afterwards resumes exactly where it was.
    let sidecars = table.join("_sluice_positions");
    let ordinals = |dir: &Path| -> Vec<(String, i64)> {
        let mut out = Vec::new();
        for shard in std::fs::read_dir(dir).unwrap() {
            let shard = shard.unwrap();
            for file in std::fs::read_dir(shard.path()).unwrap() {
                let name = file.unwrap().file_name().to_string_lossy().to_string();
                if let Ok(ordinal) = name.parse::<i64>() {
                    out.push((
                        shard.file_name().to_string_lossy().replace("%7E", "/"),
                        ordinal,
                    ));
                }
            }
        }
        out
    };
    let before = ordinals(&sidecars);
    let opened = sluice::table::open(&url, &no_options()).await.unwrap();
    let (opened, report) = sluice::maintain::vacuum::vacuum(opened, &Default::default())
        .await
        .unwrap();
    let after = ordinals(&sidecars);
    assert!(report.position_sidecars > 0, "{report:?}");
    assert_eq!(before.len() - after.len(), report.position_sidecars);
    let app_ids: Vec<String> = after.iter().map(|(a, _)| a.clone()).collect();
    let recorded = sluice::table::recorded_positions(&opened, &app_ids)
        .await
        .unwrap();
    assert_eq!(recorded.len(), 4, "{recorded:?}");
    for (app_id, ordinal) in &after {
        assert!(*ordinal >= recorded[app_id], "{app_id} kept {ordinal}");
    }
    let again = Running::start(&config);
    expected.extend(put_events(&client, stream, "d", 40, 5, 15).await);
    wait_for_orders(&lake, expected.len(), 60).await;
    again.stop().await;
    assert_exactly_once(strings(&kernel_read(&table).await, "event_id"), &expected);
}

fn ingest_error(config_text: &str, env: &[(&str, &str)]) -> (String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config_text).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["ingest", "--config"])
        .arg(&path)
        .env("HOME", dir.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
    for (k, v) in env {
        command.env(k, v);
    }
    let started = Instant::now();
    let output = command.output().unwrap();
    assert!(!output.status.success());
    (
        String::from_utf8_lossy(&output.stderr).to_string(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_kinesis_settings_fail_fast_naming_the_key() {
    let kinesis = Kinesalite::start();
    create_stream(&kinesis.client(), "real", 1).await;
    let lake = Lake::new();
    let table = format!("[[tables]]\nname = \"orders\"\nsource = \"k\"\n{EVENT_COLUMNS}");
    let lake_section = format!("[lake]\nroot = \"{}\"\n", lake.root());

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = kinesis
        .source("k", "real")
        .replace(&kinesis.endpoint, &format!("http://127.0.0.1:{closed}"));
    let (error, took) = ingest_error(&format!("{lake_section}{unreachable}{table}"), &[]);
    assert!(error.contains("sources[0].endpoint"), "{error}");
    assert!(took < Duration::from_secs(60), "took {took:?}");

    let missing_stream = kinesis.source("k", "nope");
    let (error, _) = ingest_error(&format!("{lake_section}{missing_stream}{table}"), &[]);
    assert!(
        error.contains("sources[0].stream") && error.contains("nope"),
        "{error}"
    );

    let no_credentials = kinesis.source("k", "real").replace(
        "access_key_id = \"test\"\nsecret_access_key = \"test\"\n",
        "",
    );
    let (error, _) = ingest_error(&format!("{lake_section}{no_credentials}{table}"), &[]);
    assert!(
        error.contains("sources[0].access_key_id") && error.contains("credentials"),
        "{error}"
    );

    let half = kinesis
        .source("k", "real")
        .replace("secret_access_key = \"test\"\n", "");
    let (error, _) = ingest_error(&format!("{lake_section}{half}{table}"), &[]);
    assert!(error.contains("sources[0].secret_access_key"), "{error}");
    assert!(
        !lake.table("orders").join("_delta_log").exists(),
        "nothing was written"
    );
}
