//! Erasure on the real clock: tables whose retentions are seconds long, so
//! the purge happens as it would in production, only faster. Also the paths
//! that could keep or lose records: dead letters of erased keys, ingestion
//! starting before the ledger could be read, stragglers written by a worker
//! with a skewed clock, failed Kafka seeks and concurrent `forget apply` runs.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use sluice::config::Config;
use sluice::erase::ledger::State;
use sluice::erase::{self, EraseError};

use crate::common::*;
use crate::erasure::{
    file_lake, ledger_requests, now, parquet_values_equal, raw_hits, request, rows, write_lines,
};

/// Table properties that make removed files and log entries expire in two seconds.
const SHORT_RETENTION: &str = r#"properties = { "delta.deletedFileRetentionDuration" = "interval 2 seconds", "delta.logRetentionDuration" = "interval 2 seconds" }"#;

/// A little longer than the retention above.
const PAST_RETENTION: Duration = Duration::from_millis(2600);

fn short_retention_lake(lake: &Lake) -> Config {
    let table = format!("{EVENT_COLUMNS}\n{SHORT_RETENTION}");
    let mut config = file_config(lake, &lake.table("in"), "events", "max_rows = 250", &table);
    config.erasure.enabled = false;
    config
}

/// Versions of every commit, checkpoint and checksum file left in the log.
fn log_versions(table: &Path) -> Vec<i64> {
    std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.get(..20)?.parse().ok()
        })
        .collect()
}

fn bad_lines(dir: &Path, name: &str, users: &[&str]) {
    let mut out = std::fs::File::create(dir.join(name)).unwrap();
    for (n, user) in users.iter().enumerate() {
        writeln!(
            out,
            r#"{{"event_id":"bad-{name}-{n}","user_id":"{user}","amount":"lots"}}"#
        )
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_on_the_real_clock_cuts_the_log_and_waits_for_young_orphans() {
    let lake = Lake::new();
    // "user-00000" is the smallest user of every file: it is a min statistic
    // in every commit and in the checkpoint.
    let written = write_lines(&lake.table("in"), "a.ndjson", 4000, |n| {
        format!("user-{:05}", n % 40)
    });
    bad_lines(
        &lake.table("in"),
        "b.ndjson",
        &["user-00000", "user-00001", "user-00000"],
    );
    let config = short_retention_lake(&lake);
    ingest_to_end(&config).await;
    let table = lake.table("events");
    let target = "user-00000";
    let checkpoints = files_under(&table.join("_delta_log"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".checkpoint.parquet"))
        .count();
    assert_eq!(checkpoints, 1, "a checkpoint holds the key's statistics");

    let ids = request(&config, &[&format!("user_id={target}")], now()).await;
    let run = erase::apply_all(&config, now(), None).await.unwrap();
    assert_eq!(run.applied[0].rows_deleted, 100);
    assert_eq!(run.applied[1].rows_deleted, 2, "the key's dead letters");
    // A Z-order that read the key's rows before the deletion and lost the
    // race leaves its output behind, unreferenced: keep a copy to play it.
    let removed = commits_with_operation(&table, "DELETE")[0]
        .iter()
        .find_map(|a| a["remove"]["path"].as_str().map(str::to_string))
        .unwrap();
    let pre_erasure = std::fs::read(table.join(&removed)).unwrap();

    tokio::time::sleep(PAST_RETENTION).await;
    let orphan = table.join("part-00000-zorder-lost-race.c000.zstd.parquet");
    std::fs::write(&orphan, &pre_erasure).unwrap();
    let run = erase::apply_all(&config, now(), None).await.unwrap();
    let events = run.purged.iter().find(|p| p.table == "events").unwrap();
    assert!(events.requests.is_empty(), "{events:?}");
    let held = &events.held[&ids[0]];
    assert!(
        held.iter().any(|h| h.contains("zorder-lost-race")),
        "the young orphan holds the key: {held:?}"
    );
    assert!(events.log_files_deleted > 0, "{events:?}");
    let cut = events.checkpoint_version;
    assert!(
        log_versions(&table).iter().all(|v| *v >= cut),
        "every log file below checkpoint {cut} is gone: {:?}",
        log_versions(&table)
    );
    let dead = run
        .purged
        .iter()
        .find(|p| p.table == "events.dead_letters")
        .unwrap();
    assert_eq!(dead.requests, ids, "{dead:?}");
    assert_eq!(
        ledger_requests(&config).await[0].state(),
        State::Deleted,
        "never purged while an object holds the key"
    );
    let early = erase::verify_request(&config, &ids[0], true, now())
        .await
        .unwrap();
    assert!(!early.passed);

    // Once the orphan is older than the retention, the next run vacuums it.
    tokio::time::sleep(PAST_RETENTION).await;
    let run = erase::apply_all(&config, now(), None).await.unwrap();
    let events = run.purged.iter().find(|p| p.table == "events").unwrap();
    assert_eq!(events.requests, ids, "{events:?}");
    assert!(!orphan.exists());
    assert_eq!(ledger_requests(&config).await[0].state(), State::Purged);
    let verified = erase::verify_request(&config, &ids[0], true, now())
        .await
        .unwrap();
    assert!(verified.passed, "{:?}", verified.tables);
    assert_eq!(ledger_requests(&config).await[0].state(), State::Verified);
    // Independent checks: no object's bytes, and no decoded Parquet value, hold the key.
    for dir in [&table, &lake.table("events_dead_letters")] {
        assert_eq!(raw_hits(dir, target), Vec::<String>::new());
        assert_eq!(parquet_values_equal(dir, target), Vec::<String>::new());
    }
    let expected: Vec<String> = written
        .iter()
        .filter(|(_, u)| u != target)
        .map(|(id, _)| id.clone())
        .collect();
    assert_exactly_once(
        rows(&table).await.into_iter().map(|(id, _)| id).collect(),
        &expected,
    );
    register_for_spark(&table, "erased_real_clock", expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_erased_keys_are_suppressed_even_before_their_table_exists() {
    let lake = Lake::new();
    let dir = lake.table("in");
    std::fs::create_dir_all(&dir).unwrap();
    let config = file_lake(&lake, "max_rows = 1000");
    // Filed and applied before any table exists: nothing to delete yet.
    let ids = request(&config, &["user_id=user-007"], now()).await;
    erase::apply_all(&config, now(), None).await.unwrap();
    let requests = ledger_requests(&config).await;
    assert!(
        requests[0].tables["events.dead_letters"].purged.is_none(),
        "a table that does not exist yet is not purged before its retention"
    );

    write_lines(&dir, "a.ndjson", 300, |n| format!("user-{:03}", n % 30));
    bad_lines(
        &dir,
        "b.ndjson",
        &["user-007", "user-008", "user-007", "user-009", "user-007"],
    );
    let stats = ingest_to_end(&config).await;
    assert_eq!(stats.suppressed, 10 + 3, "{stats:?}");
    assert_eq!(stats.dead_lettered, 2, "{stats:?}");
    let dead = strings(
        &kernel_read(&lake.table("events_dead_letters")).await,
        "payload_text",
    );
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().all(|d| !d.contains("user-007")), "{dead:?}");
    assert!(rows(&lake.table("events"))
        .await
        .iter()
        .all(|(_, u)| u != "user-007"));
    let verified = erase::verify_request(&config, &ids[0], true, now())
        .await
        .unwrap();
    assert!(
        verified.tables.iter().all(|t| t.live_rows_found == 0),
        "{:?}",
        verified.tables
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_waits_until_the_ledger_has_been_read() {
    let lake = Lake::new();
    let dir = lake.table("in");
    write_lines(&dir, "a.ndjson", 300, |n| format!("user-{:03}", n % 30));
    let config = file_lake(&lake, "max_rows = 1000");
    request(&config, &["user_id=user-007"], now()).await;
    // The ledger cannot be read for a while (a store outage, a bad object).
    let log = lake.table("_sluice_erasure/_delta_log");
    let newest = std::fs::read_dir(&log)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .max()
        .unwrap();
    let good = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, b"{ not a commit").unwrap();

    let running = Running::start(&config);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let waiting = running.stats.snapshot();
    assert_eq!(
        (waiting.received, waiting.committed),
        (0, 0),
        "nothing is consumed while the keys to drop are unknown"
    );
    assert!(!lake.table("events").exists(), "no table was created");
    std::fs::write(&newest, good).unwrap();
    let stats = running.finish().await;
    assert_eq!(stats.suppressed, 10);
    assert_eq!(stats.committed, 290);
    assert!(rows(&lake.table("events"))
        .await
        .iter()
        .all(|(_, u)| u != "user-007"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_straggler_from_a_worker_with_a_slow_clock_is_still_erased() {
    use sluice::table::commit::commit_with_positions;
    use sluice::table::lineage::{CommitKind, CommitLineage};
    let lake = Lake::new();
    write_lines(&lake.table("in"), "a.ndjson", 600, |n| {
        format!("user-{:03}", n % 30)
    });
    let config = file_lake(&lake, "max_rows = 200");
    ingest_to_end(&config).await;
    request(&config, &["user_id=user-007"], now()).await;
    let run = erase::apply_all(&config, now(), None).await.unwrap();
    assert_eq!(run.applied[0].rows_deleted, 20);

    // A late record of the key lands afterwards, written by a worker whose
    // clock is an hour behind: its file looks older than the deletion.
    let table_dir = lake.table("events");
    let mut table = load(&table_dir).await;
    let schema = table.snapshot().unwrap().snapshot().arrow_schema();
    let mut decoder = arrow::json::ReaderBuilder::new(schema)
        .build_decoder()
        .unwrap();
    decoder
        .decode(br#"{"event_id":"late-1","user_id":"user-007","amount":1.0,"event_time":"2024-05-01T12:00:00Z"}"#)
        .unwrap();
    let batch = decoder.flush().unwrap().unwrap();
    let mut writer = deltalake::writer::RecordBatchWriter::for_table(&table).unwrap();
    use deltalake::writer::DeltaWriter as _;
    writer.write(batch).await.unwrap();
    let mut adds = writer.flush().await.unwrap();
    for add in &mut adds {
        add.modification_time = now() - 3_600_000;
    }
    let lineage = CommitLineage {
        kind: CommitKind::Data,
        worker: "skewed".into(),
        partitions: vec![],
        unknown_fields: Default::default(),
        schemas: Default::default(),
        merge: None,
    };
    commit_with_positions(
        &mut table,
        adds.into_iter()
            .map(deltalake::kernel::Action::Add)
            .collect(),
        &[],
        &lineage,
        "skewed",
        1,
    )
    .await
    .unwrap();
    assert!(rows(&table_dir).await.iter().any(|(_, u)| u == "user-007"));

    let run = erase::apply_all(&config, now(), None).await.unwrap();
    assert_eq!(run.applied[0].rows_deleted, 1, "{:?}", run.applied[0]);
    let left = rows(&table_dir).await;
    assert!(left.iter().all(|(_, u)| u != "user-007"));
    assert_eq!(left.len(), 580);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_apply_waits_for_or_refuses_a_run_holding_the_lease() {
    use sluice::fleet::lease::{system_clock, Leases};
    let lake = Lake::new();
    write_lines(&lake.table("in"), "a.ndjson", 300, |n| {
        format!("user-{:03}", n % 30)
    });
    let config = file_lake(&lake, "max_rows = 1000");
    ingest_to_end(&config).await;
    request(&config, &["user_id=user-007"], now()).await;
    // A worker's erasure loop holds the lease.
    let store: std::sync::Arc<dyn object_store::ObjectStore> = std::sync::Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(lake.table("_sluice_erasure"))
            .unwrap(),
    );
    let worker = Leases::new(
        store,
        object_store::path::Path::from("_sluice_leases"),
        config.maintenance.lease_ttl.0,
        "worker-a",
        system_clock(),
    );
    let lease = worker
        .try_acquire(erase::APPLY_LEASE)
        .await
        .unwrap()
        .unwrap();
    let busy = erase::apply_under_lease(&config, "cli", Duration::ZERO).await;
    match busy {
        Err(EraseError::Busy { holder }) => assert_eq!(holder, "worker-a"),
        other => panic!("expected Busy, got {other:?}"),
    }
    assert_eq!(
        ledger_requests(&config).await[0].state(),
        State::Requested,
        "nothing was applied"
    );
    // Released while the CLI waits: it runs then.
    let release = async {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        worker.release(&lease).await.unwrap();
    };
    let (run, ()) = tokio::join!(
        erase::apply_under_lease(&config, "cli", Duration::from_secs(30)),
        release
    );
    assert_eq!(run.unwrap().applied[0].rows_deleted, 10);
    assert_eq!(ledger_requests(&config).await[0].state(), State::Deleted);
}
