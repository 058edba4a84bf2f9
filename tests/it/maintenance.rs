//! Maintenance never fights ingestion: compaction while appends land,
//! compactions racing each other, checkpoints with log cleanup, vacuum of
//! removed and orphaned files.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deltalake::operations::vacuum::Clock;
use sluice::maintain::checkpoint::checkpoint;
use sluice::maintain::compact::{compact, CompactOptions};
use sluice::maintain::vacuum::{vacuum, VacuumOptions};

use crate::common::*;

fn small_files() -> CompactOptions {
    CompactOptions {
        target_size: 8 << 20,
        min_file_size: 6 << 20,
        ..CompactOptions::default()
    }
}

/// Writes `lines` NDJSON events `e-<n>` into `dir/<name>`.
fn write_events(dir: &Path, name: &str, from: usize, lines: usize) -> Vec<String> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join(name)).unwrap());
    let mut ids = Vec::new();
    for n in from..from + lines {
        let id = format!("e-{n}");
        writeln!(
            out,
            r#"{{"event_id":"{id}","user_id":"u-{}","amount":{n}.0,"event_time":"2024-05-01T12:00:00Z"}}"#,
            n % 50
        )
        .unwrap();
        ids.push(id);
    }
    out.flush().unwrap();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_appends_land_loses_nothing_and_blocks_nothing() {
    let lake = Lake::new();
    let topic = "compact-live";
    let kafka = kafka(topic, 2);
    let config = kafka_config(
        &lake,
        kafka.bootstrap_servers(),
        topic,
        "g-compact",
        "max_latency = \"300ms\"",
        "",
    );
    let ingest = Running::start(&config);

    // A producer appends for a few seconds; each flush is a new small file.
    let done = Arc::new(AtomicBool::new(false));
    let producer = {
        let bootstrap = kafka.bootstrap_servers().to_string();
        let done = done.clone();
        tokio::task::spawn_blocking(move || {
            let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .create()
                .unwrap();
            let mut ids = Vec::new();
            for n in 0..3000 {
                let id = format!("live-{n}");
                let payload = format!(
                    r#"{{"event_id":"{id}","user_id":"u-{}","amount":1.0}}"#,
                    n % 40
                );
                sluice::demo::broker::send(&producer, topic, "k", payload.as_bytes()).unwrap();
                ids.push(id);
                if n % 100 == 99 {
                    producer.poll(Duration::from_millis(0));
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            sluice::demo::broker::flush(&producer).unwrap();
            done.store(true, Ordering::Relaxed);
            ids
        })
    };
    ingest
        .wait_for(Duration::from_secs(60), "first commits", |s| s.commits >= 3)
        .await;
    let table_path = lake.table("events");
    let mut table = load(&table_path).await;
    let mut committed_bins = 0;
    while !done.load(Ordering::Relaxed) {
        let metrics = compact(&mut table, &small_files(), &|_| {})
            .await
            .expect("compaction");
        committed_bins += metrics.bins_committed;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let expected = producer.await.unwrap();
    ingest
        .wait_for(Duration::from_secs(60), "all rows", |s| s.committed >= 3000)
        .await;
    let stats = ingest.stop().await;
    let last = compact(&mut table, &small_files(), &|_| {}).await.unwrap();
    committed_bins += last.bins_committed;

    assert!(
        committed_bins >= 2,
        "compaction ran while ingesting ({committed_bins} bins)"
    );
    assert_eq!(stats.fenced, 0, "ingestion was never refused: {stats:?}");
    assert_exactly_once(
        strings(&kernel_read(&table_path).await, "event_id"),
        &expected,
    );
    let live_files = table.snapshot().unwrap().log_data().num_files();
    assert!(
        live_files <= 2,
        "{live_files} files left after the final compaction"
    );
    for action in commits_with_operation(&table_path, "OPTIMIZE").concat() {
        for kind in ["add", "remove"] {
            if let Some(a) = action.get(kind) {
                assert_eq!(a["dataChange"], false, "{action}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_compactions_abort_or_land_without_duplicating_rows() {
    let lake = Lake::new();
    let input = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    for part in 0..12 {
        expected.extend(write_events(
            input.path(),
            &format!("part-{part:02}.ndjson"),
            part * 500,
            500,
        ));
    }
    // One commit per file: a dozen small files.
    let config = file_config(
        &lake,
        input.path(),
        "events",
        "max_rows = 500",
        EVENT_COLUMNS,
    );
    ingest_to_end(&config).await;
    let table_path = lake.table("events");
    let (mut a, mut b) = (load(&table_path).await, load(&table_path).await);
    let options = small_files();
    let (ma, mb) = tokio::join!(
        compact(&mut a, &options, &|_| {}),
        compact(&mut b, &options, &|_| {})
    );
    let (ma, mb) = (ma.unwrap(), mb.unwrap());
    assert!(ma.bins_committed + mb.bins_committed >= 1, "{ma:?} {mb:?}");
    assert_exactly_once(
        strings(&kernel_read(&table_path).await, "event_id"),
        &expected,
    );
}

#[derive(Debug)]
struct FixedClock(i64);

impl Clock for FixedClock {
    fn current_timestamp_millis(&self) -> i64 {
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_bound_the_log_and_vacuum_removes_old_and_orphaned_files() {
    let lake = Lake::new();
    let input = tempfile::tempdir().unwrap();
    let expected = write_events(input.path(), "events.ndjson", 0, 2500);
    let config = file_config(
        &lake,
        input.path(),
        "events",
        "max_rows = 100",
        EVENT_COLUMNS,
    );
    ingest_to_end(&config).await;
    let table_path = lake.table("events");
    let log = table_path.join("_delta_log");

    // Commits checkpoint themselves every 10 versions, with stats as structs.
    assert!(
        log.join("_last_checkpoint").exists(),
        "automatic checkpoint"
    );
    let checkpoint_file = std::fs::read_dir(&log)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".checkpoint.parquet"))
        .expect("a checkpoint file");
    let reader = deltalake::parquet::file::reader::SerializedFileReader::new(
        std::fs::File::open(&checkpoint_file).unwrap(),
    )
    .unwrap();
    use deltalake::parquet::file::reader::FileReader;
    let columns: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.path().string())
        .collect();
    assert!(
        columns.iter().any(|c| c.starts_with("add.stats_parsed")),
        "stats as structs: {columns:?}"
    );
    assert!(
        columns.iter().any(|c| c == "add.stats"),
        "stats as JSON too"
    );

    // Compact, then checkpoint and expire the log as of 31 days from now.
    let mut table = load(&table_path).await;
    let compacted = compact(&mut table, &small_files(), &|_| {}).await.unwrap();
    assert!(compacted.files_in >= 20, "{compacted:?}");
    let later = chrono::Utc::now().timestamp_millis() + 31 * 24 * 3_600_000;
    let metrics = checkpoint(&mut table, true, later).await.unwrap();
    assert!(metrics.log_files_deleted >= 20, "{metrics:?}");
    let commits_left = std::fs::read_dir(&log)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .count();
    assert!(
        commits_left <= 2,
        "{commits_left} JSON commits left to replay"
    );
    assert_exactly_once(
        strings(&kernel_read(&table_path).await, "event_id"),
        &expected,
    );

    // An orphan: a data file no commit references.
    std::fs::write(table_path.join("part-orphan.parquet"), b"not referenced").unwrap();
    let data_files = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
            .count()
    };
    let before = data_files(&table_path);

    // Too short a retention is refused; a fresh table keeps everything.
    let refused = vacuum(
        load(&table_path).await,
        &VacuumOptions {
            retention: Duration::from_secs(3600),
            ..Default::default()
        },
    )
    .await;
    assert!(refused
        .unwrap_err()
        .to_string()
        .contains("deletedFileRetentionDuration"));
    let (_, now) = vacuum(load(&table_path).await, &VacuumOptions::default())
        .await
        .unwrap();
    assert!(
        now.files.is_empty(),
        "nothing is old enough yet: {:?}",
        now.files
    );

    // Eight days later: removed files and the orphan go, live files stay.
    let clock = Some(Arc::new(FixedClock(
        chrono::Utc::now().timestamp_millis() + 8 * 24 * 3_600_000,
    )) as Arc<dyn Clock>);
    let dry = VacuumOptions {
        dry_run: true,
        clock: clock.clone(),
        ..Default::default()
    };
    let (_, planned) = vacuum(load(&table_path).await, &dry).await.unwrap();
    assert_eq!(
        planned.files.len() as u64,
        compacted.files_in + 1,
        "{:?}",
        planned.files
    );
    assert!(planned.files.iter().any(|f| f.contains("part-orphan")));
    assert_eq!(data_files(&table_path), before, "a dry run deletes nothing");
    let real = VacuumOptions {
        clock,
        ..Default::default()
    };
    let (_, report) = vacuum(load(&table_path).await, &real).await.unwrap();
    assert_eq!(report.files.len(), planned.files.len());
    assert_eq!(
        data_files(&table_path) as u64,
        before as u64 - compacted.files_in - 1
    );
    assert_exactly_once(
        strings(&kernel_read(&table_path).await, "event_id"),
        &expected,
    );
}

#[test]
fn cli_maintenance_reports_json_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["compact", "--json"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no Delta table"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["compact", "--target-size", "lots"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("lots"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_loop_compacts_and_zorders_while_ingesting() {
    let lake = Lake::new();
    let topic = "loop";
    let kafka = kafka(topic, 2);
    let batching = r#"max_latency = "200ms"

[maintenance]
interval = "1s"
compact_min_small_files = 4
small_file_size = "1MiB"
compact_target_size = "8MiB"
zorder_idle = "3s"
lease_ttl = "30s""#;
    let config = kafka_config(
        &lake,
        kafka.bootstrap_servers(),
        topic,
        "g-loop",
        batching,
        "zorder_by = [\"user_id\"]",
    );
    let ingest = Running::start(&config);
    let mut expected = Vec::new();
    for wave in 0..6 {
        expected.extend(produce(&kafka, topic, &format!("w{wave}"), 300, 0));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    ingest
        .wait_for(Duration::from_secs(60), "all rows", |s| {
            s.committed >= expected.len() as u64
        })
        .await;
    let table_path = lake.table("events");
    // The partition goes idle: the loop Z-orders it by user_id.
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let table = load(&table_path).await;
            let tagged = table.snapshot().unwrap().log_data().iter().all(|f| {
                #[allow(deprecated)]
                let add = f.add_action();
                add.tags.unwrap_or_default().contains_key("sluice.zorder")
            });
            if tagged {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await
    .expect("the maintenance loop Z-orders the idle table");
    let stats = ingest.stop().await;
    assert_eq!(stats.fenced, 0);
    assert!(!commits_with_operation(&table_path, "OPTIMIZE")
        .concat()
        .is_empty());
    assert_exactly_once(
        strings(&kernel_read(&table_path).await, "event_id"),
        &expected,
    );
}
