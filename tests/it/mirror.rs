//! Mirror tables: a generator replays random PostgreSQL change events
//! (Debezium's envelope) over 10,000 keys, with connector-restart replays
//! and stale out-of-order events, into a mirror table and a mutation-log
//! table at once. The mirror must equal the generator's final state
//! exactly (read by `delta_kernel`, and by Spark in the suite), the log
//! must hold every event once; compaction and Z-order run every second
//! meanwhile and an erasure request lands mid-stream. Then crashes:
//! between a merge's files and its commit, and after commits.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::AsArray;
use sluice::demo::broker::{self, EmbeddedKafka};
use sluice::erase::{self, TableChoice};

use crate::common::*;

/// A customer row: name and balance.
pub(crate) type Row = (String, i64);

/// Change events with the state they leave.
pub(crate) struct Changes {
    /// (Kafka key, value); an empty value is a tombstone.
    pub events: Vec<(String, Vec<u8>)>,
    /// The source table after every event.
    pub state: BTreeMap<i64, Row>,
}

impl Changes {
    /// Events that are change events (not tombstones).
    pub fn mutations(&self) -> impl Iterator<Item = &(String, Vec<u8>)> {
        self.events.iter().filter(|(_, v)| !v.is_empty())
    }
}

/// xorshift64*: a deterministic sequence for a seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// One Debezium PostgreSQL envelope. `commit` is the last commit's LSN
/// before this change (`None` in a snapshot).
pub(crate) fn envelope(
    op: &str,
    id: i64,
    before: Option<&Row>,
    after: Option<&Row>,
    lsn: u64,
    commit: Option<u64>,
) -> Vec<u8> {
    let image = |row: Option<&Row>| {
        row.map(|(name, balance)| serde_json::json!({"id": id, "name": name, "balance": balance}))
    };
    let sequence = serde_json::json!([commit.map(|c| c.to_string()), lsn.to_string()]).to_string();
    serde_json::json!({
        "before": image(before),
        "after": image(after),
        "source": {
            "version": "2.5.0.Final", "connector": "postgresql", "name": "shop",
            "ts_ms": 1_700_000_000_000u64 + lsn, "snapshot": if op == "r" { "true" } else { "false" },
            "db": "shop", "sequence": sequence, "schema": "public", "table": "customers",
            "txId": lsn / 10, "lsn": lsn, "xmin": null
        },
        "op": op,
        "ts_ms": 1_700_000_000_000u64 + lsn + 5,
        "transaction": null
    })
    .to_string()
    .into_bytes()
}

/// A snapshot of half the keys, then `steps` random inserts, updates (80%
/// of changes to existing keys) and deletes (each followed by a tombstone
/// half the time). About 3% of the steps replay the last 50 events in
/// order, as a restarted connector does; about 3% resend an older event
/// of a key that changed since (stale: it must change nothing).
pub(crate) fn changes(keys: i64, steps: usize, seed: u64) -> Changes {
    let mut rng = Rng(seed | 1);
    let mut state: BTreeMap<i64, Row> = BTreeMap::new();
    let mut events: Vec<(String, Vec<u8>)> = Vec::new();
    let mut first_event: BTreeMap<i64, usize> = BTreeMap::new();
    let mut lsn: u64 = 1_000_000;
    for id in 0..keys / 2 {
        let row = (format!("name-{id}-0"), id * 10);
        first_event.insert(id, events.len());
        events.push((
            id.to_string(),
            envelope("r", id, None, Some(&row), lsn, None),
        ));
        state.insert(id, row);
    }
    let mut last_commit = lsn;
    for step in 0..steps {
        let roll = rng.below(100);
        if roll < 3 && events.len() > 50 {
            let run = events[events.len() - 50..].to_vec();
            events.extend(run);
            continue;
        }
        if roll < 6 {
            let id = rng.below(keys as u64) as i64;
            if let (Some(&first), true) = (first_event.get(&id), state.contains_key(&id)) {
                let old = events[first].clone();
                events.push(old);
                continue;
            }
        }
        let id = rng.below(keys as u64) as i64;
        lsn += 10;
        let key = id.to_string();
        match state.get(&id).cloned() {
            None => {
                let row = (format!("name-{id}-{step}"), rng.below(1_000_000) as i64);
                first_event.entry(id).or_insert(events.len());
                events.push((
                    key,
                    envelope("c", id, None, Some(&row), lsn, Some(last_commit)),
                ));
                state.insert(id, row);
            }
            Some(old) if rng.below(10) < 8 => {
                let row = (format!("name-{id}-{step}"), rng.below(1_000_000) as i64);
                events.push((
                    key,
                    envelope("u", id, Some(&old), Some(&row), lsn, Some(last_commit)),
                ));
                state.insert(id, row);
            }
            Some(old) => {
                events.push((
                    key.clone(),
                    envelope("d", id, Some(&old), None, lsn, Some(last_commit)),
                ));
                if rng.below(2) == 0 {
                    events.push((key, Vec::new()));
                }
                state.remove(&id);
            }
        }
        last_commit = lsn;
    }
    Changes { events, state }
}

pub(crate) const TOPIC: &str = "shop.public.customers";

pub(crate) fn send_all(kafka: &EmbeddedKafka, events: &[(String, Vec<u8>)]) {
    let producer = kafka.producer().unwrap();
    for (key, value) in events {
        broker::send(&producer, TOPIC, key, value).unwrap();
    }
    broker::flush(&producer).unwrap();
}

/// Sends `events` from a thread in chunks of `chunk`, 150 ms apart.
fn send_slowly(
    kafka: &EmbeddedKafka,
    events: &[(String, Vec<u8>)],
    chunk: usize,
) -> std::thread::JoinHandle<()> {
    let events = events.to_vec();
    let producer = kafka.producer().unwrap();
    std::thread::spawn(move || {
        for chunk in events.chunks(chunk) {
            for (key, value) in chunk {
                broker::send(&producer, TOPIC, key, value).unwrap();
            }
            broker::flush(&producer).unwrap();
            std::thread::sleep(Duration::from_millis(150));
        }
    })
}

/// A mirror table `customers` and a log table `customers_log` on the topic.
pub(crate) fn config(
    lake: &Lake,
    kafka: &EmbeddedKafka,
    maintenance: &str,
) -> sluice::config::Config {
    config_with(lake, kafka, maintenance, None)
}

/// [`config`]; with a registry URL the events are Avro envelopes and the
/// tables are typed by their schema (the log table keeps `before` images).
pub(crate) fn config_with(
    lake: &Lake,
    kafka: &EmbeddedKafka,
    maintenance: &str,
    registry: Option<&str>,
) -> sluice::config::Config {
    let source = |name: &str| {
        let registry = registry
            .map(|url| format!("registry = {{ url = \"{url}\" }}\n"))
            .unwrap_or_default();
        format!(
            "[[sources]]\nkind = \"kafka\"\nname = \"{name}\"\nbrokers = \"{}\"\ntopics = [\"{TOPIC}\"]\ngroup_id = \"g-{name}\"\nformat = \"debezium\"\n{registry}properties = {{ \"session.timeout.ms\" = \"6000\", \"heartbeat.interval.ms\" = \"500\" }}\n",
            kafka.bootstrap_servers()
        )
    };
    let columns = match registry {
        Some(_) => String::new(),
        None => r#"columns = [
  { name = "id", type = "long", nullable = false },
  { name = "name", type = "string", nullable = false },
  { name = "balance", type = "long" },
]"#
        .to_string(),
    };
    let before = if registry.is_some() {
        "before_image = true"
    } else {
        ""
    };
    parse_valid(&format!(
        r#"
[lake]
root = "{root}"
[batching]
max_latency = "300ms"
{maintenance}
[erasure]
enabled = false
{mirror}{log}
[[tables]]
name = "customers"
source = "mirror"
key = "id"
mode = "mirror"
primary_key = ["id"]
{columns}
[[tables]]
name = "customers_log"
source = "log"
key = "id"
{before}
{columns}
"#,
        root = lake.root(),
        mirror = source("mirror"),
        log = source("log"),
    ))
}

/// The mirror table's rows by id, checking there is one per id.
pub(crate) async fn mirror_rows(lake: &Lake) -> BTreeMap<i64, Row> {
    let batches = kernel_read(&lake.table("customers")).await;
    let mut rows = BTreeMap::new();
    for batch in &batches {
        let ids = batch
            .column_by_name("id")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>();
        let names = batch.column_by_name("name").unwrap().as_string::<i32>();
        let balances = batch
            .column_by_name("balance")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>();
        for row in 0..batch.num_rows() {
            let held = (names.value(row).to_string(), balances.value(row));
            let id = ids.value(row);
            assert!(rows.insert(id, held).is_none(), "id {id} has two rows");
        }
    }
    rows
}

/// Every difference between two states, a few shown.
pub(crate) fn assert_same_state<K: Ord + std::fmt::Display, V: PartialEq + std::fmt::Debug>(
    actual: &BTreeMap<K, V>,
    expected: &BTreeMap<K, V>,
) {
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(id, row)| actual.get(id) != Some(row))
        .map(|(id, row)| format!("{id}: expected {row:?}, found {:?}", actual.get(id)))
        .chain(
            actual
                .keys()
                .filter(|id| !expected.contains_key(id))
                .map(|id| format!("{id}: deleted at the source, still in the mirror")),
        )
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} keys differ, e.g. {:?}",
        wrong.len(),
        expected.len(),
        &wrong[..wrong.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_table_equals_the_source_after_random_changes_under_maintenance_and_erasure() {
    test_log();
    let lake = Lake::new();
    let kafka = kafka(TOPIC, 4);
    let changes = changes(10_000, 30_000, 7);
    let erased: i64 = 4242;
    let half = changes.events.len() / 2;
    let config = config(
        &lake,
        &kafka,
        r#"[maintenance]
interval = "1s"
compact_min_small_files = 4
small_file_size = "4MiB"
compact_target_size = "8MiB"
zorder_idle = "1s"
zorder_unordered_bytes = "256KiB""#,
    );
    let mutations = changes.mutations().count() as u64;
    let mutations_first_half = changes.events[..half]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .count() as u64;
    let running = Running::start(&config);
    send_all(&kafka, &changes.events[..half]);
    running
        .wait_for(Duration::from_secs(120), "the first half", |s| {
            s.committed >= 2 * mutations_first_half
        })
        .await;

    // An erasure request mid-stream, applied while merges land.
    let key = sluice::erase::keys::SubjectKey::parse(&format!("id={erased}")).unwrap();
    erase::file_requests(&config, &[key], &TableChoice::All, "ticket-7", now_ms())
        .await
        .unwrap();
    // Over about 10 seconds, so merges keep landing while the maintenance
    // loop (every second) compacts and Z-orders, on a loaded machine too.
    let producer = send_slowly(&kafka, &changes.events[half..], 200);
    erase::apply_all(&config, now_ms(), None).await.unwrap();
    producer.join().unwrap();
    running
        .wait_for(Duration::from_secs(180), "every change", |s| {
            s.committed + s.suppressed >= 2 * mutations
        })
        .await;
    let stats = running.stop().await;
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    // Records that landed before ingestion learnt of the request.
    erase::apply_all(&config, now_ms(), None).await.unwrap();

    let mut expected = changes.state.clone();
    expected.remove(&erased);
    let actual = mirror_rows(&lake).await;
    assert_same_state(&actual, &expected);

    let maintenance = commits_with_operation(&lake.table("customers"), "OPTIMIZE");
    assert!(
        !maintenance.is_empty(),
        "compaction or Z-order ran while merges landed"
    );
    let stale = merge_sums(&lake.table("customers"), "stale");
    assert!(stale > 0, "replays were recognised as stale");
    // Merges marked the rows they replaced in deletion vectors...
    let marked = merge_sums(&lake.table("customers"), "files_marked");
    assert!(marked > 0, "merges added deletion vectors");
    // ...and the erased key is in no live file's bytes, not even in a row
    // a deletion vector hides.
    assert!(
        !raw_ids(&lake.table("customers")).await.contains(&erased),
        "a live file still holds the erased key"
    );

    // The log holds every change once, but the erased key's.
    let log = kernel_read(&lake.table("customers_log")).await;
    let mut logged: Vec<String> = strings(&log, "id")
        .into_iter()
        .zip(strings(&log, "cdc_position"))
        .map(|(id, position)| format!("{id}@{position}"))
        .collect();
    logged.sort();
    let mut sent: Vec<String> = changes
        .mutations()
        .filter(|(key, _)| key != &erased.to_string())
        .map(|(key, value)| {
            let v: serde_json::Value = serde_json::from_slice(value).unwrap();
            format!("{key}@lsn={}", v["source"]["lsn"])
        })
        .collect();
    sent.sort();
    assert_eq!(logged.len(), sent.len());
    assert!(logged == sent, "the log differs from the changes sent");
    register_for_spark(&lake.table("customers"), "mirror_customers", expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_survives_a_crash_before_a_merge_commit_and_a_kill_after_commits() {
    test_log();
    let lake = Lake::new();
    let kafka = kafka(TOPIC, 2);
    let changes = changes(2_000, 8_000, 11);
    let config = config(&lake, &kafka, "[maintenance]\nenabled = false");
    let third = changes.events.len() / 3;
    send_all(&kafka, &changes.events[..third]);

    // A merge writes its files, then the worker dies before committing.
    let running = Running::start(&config);
    running
        .wait_for(Duration::from_secs(60), "a first merge", |s| s.commits >= 2)
        .await;
    sluice::ingest::mirror::crash_before_next_commit("customers");
    send_all(&kafka, &changes.events[third..2 * third]);
    let failed = tokio::time::timeout(Duration::from_secs(60), running.task)
        .await
        .expect("the injected crash stops ingestion")
        .expect("no panic");
    assert!(
        failed
            .as_ref()
            .is_err_and(|e| e.to_string().contains("injected crash")),
        "{failed:?}"
    );

    // Restarted, killed after a few commits, restarted again.
    let second = Running::start(&config);
    let rest = &changes.events[2 * third..];
    send_all(&kafka, &rest[..rest.len() / 2]);
    second
        .wait_for(Duration::from_secs(60), "merges after the restart", |s| {
            s.commits >= 2
        })
        .await;
    second.kill().await;
    send_all(&kafka, &rest[rest.len() / 2..]);
    let mutations = changes.mutations().count() as u64;
    let last = Running::start(&config);
    last.wait_for(Duration::from_secs(120), "the rest", |_| {
        log_holds(&lake, mutations)
            && logged_positions(&lake, "customers") == logged_positions(&lake, "customers_log")
    })
    .await;
    last.stop().await;
    assert_same_state(&mirror_rows(&lake).await, &changes.state);
    let log = kernel_read(&lake.table("customers_log")).await;
    assert_eq!(
        log.iter().map(|b| b.num_rows() as u64).sum::<u64>(),
        mutations
    );
}

/// Whether the log table holds `mutations` rows (by its file statistics).
pub(crate) fn log_holds(lake: &Lake, mutations: u64) -> bool {
    let path = lake.table("customers_log");
    let rows: u64 = std::fs::read_dir(path.join("_delta_log"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .flat_map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .filter_map(|a| {
            a["add"]["stats"]
                .as_str()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        })
        .filter_map(|s| s["numRecords"].as_u64())
        .sum();
    rows >= mutations
}

/// The latest `txn` position of each topic partition (`topic/partition`,
/// whichever source read it) in the JSON commits of `table`: the mirror and
/// the log read the same partitions through two sources.
pub(crate) fn logged_positions(lake: &Lake, table: &str) -> BTreeMap<String, i64> {
    let mut commits: Vec<std::path::PathBuf> =
        std::fs::read_dir(lake.table(table).join("_delta_log"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
    commits.sort();
    let mut positions = BTreeMap::new();
    for commit in commits {
        for line in std::fs::read_to_string(&commit).unwrap_or_default().lines() {
            let Ok(action) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if let (Some(app), Some(version)) = (
                action["txn"]["appId"].as_str(),
                action["txn"]["version"].as_i64(),
            ) {
                let partition = app.splitn(3, '/').nth(2).unwrap_or(app);
                positions.insert(partition.to_string(), version);
            }
        }
    }
    positions
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_with_a_rebalance_mid_stream_keep_the_mirror_exact() {
    let lake = Lake::new();
    let kafka = kafka(TOPIC, 6);
    let changes = changes(3_000, 9_000, 13);
    let config = config(&lake, &kafka, "[maintenance]\nenabled = false");
    let (first, rest) = changes.events.split_at(changes.events.len() / 3);
    let (second, third) = rest.split_at(rest.len() / 2);
    send_all(&kafka, first);
    let a = Running::start(&config);
    a.wait_for(Duration::from_secs(60), "A merging", |s| s.commits >= 2)
        .await;
    // B joins: partitions move while more changes arrive, for about 5
    // seconds (longer than a rebalance takes on a loaded machine: B must
    // have records left to merge once it holds partitions).
    let b = Running::start(&config);
    send_slowly(&kafka, second, 100).join().unwrap();
    b.wait_for(Duration::from_secs(60), "B merging", |s| s.commits >= 1)
        .await;
    // A leaves mid-stream.
    send_all(&kafka, third);
    let a_stats = a.stop().await;
    let mutations = changes.mutations().count() as u64;
    // The log and the mirror are two pipelines: the mirror has merged
    // everything once it records the positions the complete log records.
    b.wait_for(Duration::from_secs(120), "B takes the rest", |_| {
        log_holds(&lake, mutations)
            && logged_positions(&lake, "customers") == logged_positions(&lake, "customers_log")
    })
    .await;
    let b_stats = b.stop().await;
    assert!(
        a_stats.commits > 0 && b_stats.commits > 0,
        "both workers merged: {a_stats:?} {b_stats:?}"
    );
    assert_same_state(&mirror_rows(&lake).await, &changes.state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_events_a_mirror_cannot_apply_are_dead_letters_with_the_reason() {
    let lake = Lake::new();
    let kafka = kafka(TOPIC, 1);
    let config = config(&lake, &kafka, "[maintenance]\nenabled = false");
    let row = |name: &str, balance: i64| (name.to_string(), balance);
    let source = r#"{"connector": "postgresql", "lsn": 900, "db": "shop", "table": "customers"}"#;
    let events: Vec<(String, Vec<u8>)> = vec![
        ("1".into(), envelope("c", 1, None, Some(&row("a", 10)), 100, Some(90))),
        ("2".into(), envelope("c", 2, None, Some(&row("b", 20)), 110, Some(100))),
        (
            "3".into(),
            format!(r#"{{"op": "u", "before": {{"id": 3, "name": "c"}}, "after": null, "source": {source}}}"#)
                .into_bytes(),
        ),
        (
            "".into(),
            format!(r#"{{"op": "c", "before": null, "after": {{"name": "keyless"}}, "source": {source}}}"#)
                .into_bytes(),
        ),
        (
            "5".into(),
            format!(r#"{{"before": null, "after": {{"id": 5, "name": "e"}}, "source": {source}}}"#)
                .into_bytes(),
        ),
        (
            "6".into(),
            format!(r#"{{"op": "c", "before": null, "after": {{"id": 6, "balance": 1}}, "source": {source}}}"#)
                .into_bytes(),
        ),
        ("1".into(), envelope("u", 1, Some(&row("a", 10)), Some(&row("a2", 11)), 120, Some(110))),
        ("2".into(), envelope("d", 2, Some(&row("b", 20)), None, 130, Some(120))),
        ("2".into(), Vec::new()),
    ];
    send_all(&kafka, &events);
    let running = Running::start(&config);
    running
        .wait_for(Duration::from_secs(60), "every change", |s| {
            s.committed >= 8 && s.dead_lettered >= 8
        })
        .await;
    let stats = running.stop().await;
    assert_eq!((stats.committed, stats.dead_lettered), (8, 8), "{stats:?}");
    let mirror = mirror_rows(&lake).await;
    assert_eq!(mirror, BTreeMap::from([(1, row("a2", 11))]));
    let reasons = strings(
        &kernel_read(&lake.table("customers_dead_letters")).await,
        "error",
    );
    // `status` sums the merges: the four changes that hold a key, and the
    // rows they left (appended images less the rows they replaced).
    let url = url::Url::from_directory_path(lake.table("customers")).unwrap();
    let status = sluice::status::table_status(&url, &no_options(), 1 << 20)
        .await
        .unwrap();
    let merges = status.merges.clone().expect("a mirror's status has merges");
    assert!(merges.commits >= 1, "{merges:?}");
    assert_eq!(merges.sums.mutations, 4, "{merges:?}");
    assert_eq!(merges.sums.upserted - merges.sums.removed, 1, "{merges:?}");
    let rendered = sluice::cli::status::render(&status);
    assert!(
        rendered.contains(&format!("merges       {} (4 mutations", merges.commits)),
        "{rendered}"
    );
    // The catalog says what the table is.
    let catalog = sluice::catalog::gather::read(&config, 1 << 20, now_ms())
        .await
        .unwrap();
    let text = sluice::catalog::text::render(&catalog);
    assert!(text.contains("mirror: one row per id"), "{text}");
    for expected in [
        "`op` = `u` without an `after` image",
        "the primary key column `id` is missing from the `after` image",
        "no `op`",
        "the required column `name` is missing from the `after` image",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "{expected}: {reasons:?}"
        );
    }
}
