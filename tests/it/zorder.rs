//! Z-order: point lookups skip files, memory stays within the budget by
//! spilling, a second run after a small append rewrites only the new data,
//! and bad requests change nothing.

use std::io::Write;
use std::path::Path;

use sluice::maintain::zorder::{zorder, ZOrderOptions};

use crate::common::*;

/// Writes `count` events with ids from `from`, users spread over `users`.
fn write_events(path: &Path, from: usize, count: usize, users: usize) -> Vec<String> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut ids = Vec::new();
    for n in from..from + count {
        let id = format!("e-{n:07}");
        let user = (n * 7919) % users;
        writeln!(
            out,
            r#"{{"event_id":"{id}","user_id":"u-{user:06}","amount":{}.25,"event_time":"2024-05-01T12:{:02}:00Z"}}"#,
            n % 997,
            n % 60
        )
        .unwrap();
        ids.push(id);
    }
    out.flush().unwrap();
    ids
}

async fn ingest_file(lake: &Lake, path: &Path, batching: &str) {
    ingest_to_end(&file_config(lake, path, "events", batching, EVENT_COLUMNS)).await;
}

/// Share of live files whose `user_id` min/max stats rule out `user`, averaged over `users`.
async fn skip_ratio(table: &Path, users: &[String]) -> (f64, usize) {
    let table = load(table).await;
    let snapshot = table.snapshot().unwrap();
    let ranges: Vec<(String, String)> = snapshot
        .log_data()
        .iter()
        .map(|f| {
            let stats: serde_json::Value = serde_json::from_str(&f.stats().unwrap()).unwrap();
            (
                stats["minValues"]["user_id"].as_str().unwrap().to_string(),
                stats["maxValues"]["user_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let total = ranges.len();
    let mut skipped = 0usize;
    for user in users {
        skipped += ranges
            .iter()
            .filter(|(lo, hi)| user < lo || user > hi)
            .count();
    }
    (skipped as f64 / (total * users.len()) as f64, total)
}

/// The table's live files and their sizes.
fn live_files(table: &deltalake::DeltaTable) -> std::collections::BTreeMap<String, u64> {
    table
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .map(|f| (f.path().to_string(), f.size() as u64))
        .collect()
}

fn sample_users() -> Vec<String> {
    (0..50).map(|i| format!("u-{:06}", i * 97 + 13)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_lookups_skip_files_and_a_second_run_only_orders_new_data() {
    let lake = Lake::new();
    let input = lake.dir.path().join("events.ndjson");
    let mut expected = write_events(&input, 0, 40_000, 5000);
    // 200 commits of 200 rows: 200 small files, every user in most of them.
    ingest_file(&lake, &input, "max_rows = 200").await;
    let table_path = lake.table("events");
    let (before, files_before) = skip_ratio(&table_path, &sample_users()).await;
    assert!(files_before >= 200, "{files_before} files");

    let options = ZOrderOptions {
        columns: vec!["user_id".into()],
        target_size: 16 << 10,
        memory_budget: 64 << 20,
        ..ZOrderOptions::default()
    };
    let mut table = load(&table_path).await;
    let first = zorder(&mut table, &options, &|_| {}).await.unwrap();
    assert_eq!(first.files_in as usize, files_before);
    let (after, files_after) = skip_ratio(&table_path, &sample_users()).await;
    eprintln!(
        "z-order by user_id: {files_before} files, skip ratio {before:.3} -> {files_after} files, skip ratio {after:.3}"
    );
    assert!(files_after >= 20, "{files_after} output files");
    assert!(
        after >= 0.95,
        "a point lookup skips {after:.3} of the files"
    );
    assert_exactly_once(
        strings(&kernel_read(&table_path).await, "event_id"),
        &expected,
    );

    // A small append, then a second run: only the new files are sorted.
    let ordered = live_files(&load(&table_path).await);
    let more = lake.dir.path().join("more.ndjson");
    expected.extend(write_events(&more, 40_000, 2000, 5000));
    let config = file_config(&lake, &more, "events", "max_rows = 200", EVENT_COLUMNS);
    ingest_to_end(&config).await;
    let mut table = load(&table_path).await;
    let appended: u64 = live_files(&table)
        .into_iter()
        .filter(|(path, _)| !ordered.contains_key(path))
        .map(|(_, size)| size)
        .sum();
    let second = zorder(&mut table, &options, &|_| {}).await.unwrap();
    let total_bytes: u64 = live_files(&table).values().sum();
    eprintln!(
        "incremental z-order: rewrote {} of {} bytes ({} already ordered)",
        second.bytes_in, total_bytes, second.ordered_bytes_rewritten
    );
    assert_eq!(second.files_in, 10, "only the ten appended files");
    assert_eq!(second.ordered_bytes_rewritten, 0);
    assert_eq!(second.bytes_in, appended, "the appended files' bytes");
    assert!(
        second.bytes_in * 5 < total_bytes,
        "a small fraction is rewritten"
    );
    let (after_append, _) = skip_ratio(&table_path, &sample_users()).await;
    assert!(
        after_append >= 0.9,
        "two runs: lookups still skip {after_append:.3}"
    );
    assert_exactly_once(
        strings(&kernel_read(&table_path).await, "event_id"),
        &expected,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_larger_than_the_budget_spills_and_completes() {
    let lake = Lake::new();
    let input = lake.dir.path().join("events.ndjson");
    let expected = write_events(&input, 0, 120_000, 20_000);
    ingest_file(&lake, &input, "max_rows = 20000").await;
    let table_path = lake.table("events");
    let budget = 2usize << 20;
    let options = ZOrderOptions {
        columns: vec!["user_id".into(), "amount".into()],
        target_size: 1 << 20,
        memory_budget: budget,
        ..ZOrderOptions::default()
    };
    let mut table = load(&table_path).await;
    let metrics = zorder(&mut table, &options, &|_| {}).await.unwrap();
    eprintln!("z-order with a {budget}-byte budget: {metrics:?}");
    assert!(
        metrics.spilled_runs >= 4,
        "sorted in several spilled runs: {metrics:?}"
    );
    assert!(
        metrics.peak_sort_memory <= (budget / 2 + (1 << 20)) as u64,
        "buffered {} bytes with a budget of {budget}",
        metrics.peak_sort_memory
    );
    assert_eq!(metrics.rows, 120_000);
    assert_exactly_once(
        strings(&kernel_read(&table_path).await, "event_id"),
        &expected,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_ordered_side_by_side_each_on_its_own() {
    let lake = Lake::new();
    let input = lake.dir.path().join("events.ndjson");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    let mut expected = Vec::new();
    for n in 0..30_000usize {
        let id = format!("e-{n:07}");
        writeln!(
            out,
            r#"{{"event_id":"{id}","user_id":"u-{:06}","amount":1.5,"event_time":"2024-05-0{}T08:00:00Z"}}"#,
            (n * 7919) % 3000,
            1 + n % 3
        )
        .unwrap();
        expected.push(id);
    }
    out.flush().unwrap();
    drop(out);
    let columns = format!(
        "{EVENT_COLUMNS}partition_by = [\"date\"]\nderived = [{{ name = \"date\", from = \"event_time\", transform = \"date\" }}]\n"
    );
    ingest_to_end(&file_config(
        &lake,
        &input,
        "events",
        "max_rows = 500",
        &columns,
    ))
    .await;
    let table_path = lake.table("events");

    // A budget that lets partitions share it: they are rewritten at once.
    let options = ZOrderOptions {
        columns: vec!["user_id".into()],
        target_size: 16 << 10,
        memory_budget: 512 << 20,
        ..ZOrderOptions::default()
    };
    let mut table = load(&table_path).await;
    let metrics = zorder(&mut table, &options, &|_| {}).await.unwrap();
    assert_eq!(metrics.partitions, 3, "{metrics:?}");
    assert_eq!(metrics.versions.len(), 3, "one commit per partition");
    assert_eq!(metrics.rows, 30_000);
    assert_exactly_once(
        strings(&kernel_read(&table_path).await, "event_id"),
        &expected,
    );
    // Every partition holds its own run: files never mix dates, and each
    // date's files cover disjoint user ranges.
    let table = load(&table_path).await;
    let snapshot = table.snapshot().unwrap();
    let mut by_date: std::collections::BTreeMap<String, Vec<(String, String)>> = Default::default();
    for file in snapshot.log_data().iter() {
        let path = file.path().to_string();
        let date = path.split('/').next().unwrap().to_string();
        assert!(date.starts_with("date=2024-05-0"), "{path}");
        let stats: serde_json::Value = serde_json::from_str(&file.stats().unwrap()).unwrap();
        by_date.entry(date).or_default().push((
            stats["minValues"]["user_id"].as_str().unwrap().to_string(),
            stats["maxValues"]["user_id"].as_str().unwrap().to_string(),
        ));
    }
    assert_eq!(by_date.len(), 3);
    for (date, mut ranges) in by_date {
        assert!(ranges.len() >= 3, "{date}: {} files", ranges.len());
        ranges.sort();
        for pair in ranges.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "{date}: overlapping {pair:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_zorder_stops_writing() {
    let lake = Lake::new();
    let input = lake.dir.path().join("events.ndjson");
    write_events(&input, 0, 120_000, 20_000);
    ingest_file(&lake, &input, "max_rows = 20000").await;
    let table_path = lake.table("events");
    let parquet_files = || {
        files_under(&table_path)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .count()
    };
    let before = parquet_files();
    let options = ZOrderOptions {
        columns: vec!["user_id".into()],
        target_size: 64 << 10,
        memory_budget: 2 << 20,
        ..ZOrderOptions::default()
    };
    let mut table = load(&table_path).await;
    // Dropped while it still reads and sorts (shutdown of the maintenance loop).
    let run = zorder(&mut table, &options, &|_| {});
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(150), run)
            .await
            .is_err(),
        "the z-order must still be running when it is dropped"
    );
    // A write already handed to the store when the job was dropped may
    // still land (a local store writes on a blocking thread); nothing after.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let at_drop = parquet_files();
    assert!(at_drop >= before);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(parquet_files(), at_drop, "no file written after the drop");
    assert_eq!(load(&table_path).await.version(), table.version());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_change_nothing() {
    let lake = Lake::new();
    let input = lake.dir.path().join("events.ndjson");
    write_events(&input, 0, 100, 10);
    ingest_file(&lake, &input, "").await;
    let table_path = lake.table("events");
    let mut table = load(&table_path).await;
    let version = table.version();
    for (columns, expected) in [
        (vec!["nope".to_string()], "unknown column `nope`"),
        (vec![], "at least one column"),
    ] {
        let options = ZOrderOptions {
            columns,
            ..ZOrderOptions::default()
        };
        let error = zorder(&mut table, &options, &|_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{error}");
    }
    assert_eq!(load(&table_path).await.version(), version);

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["zorder", "--by", "amount,missing"])
        .arg(&table_path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown column `missing`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zorder_while_appends_land_loses_nothing() {
    let lake = Lake::new();
    let first = lake.dir.path().join("first.ndjson");
    let mut expected = write_events(&first, 0, 20_000, 2000);
    ingest_file(&lake, &first, "max_rows = 500").await;
    let table_path = lake.table("events");

    // A second backfill appends a commit every 300 rows while Z-order runs.
    let second = lake.dir.path().join("second.ndjson");
    expected.extend(write_events(&second, 20_000, 15_000, 2000));
    let config = file_config(&lake, &second, "events", "max_rows = 300", EVENT_COLUMNS);
    let appender = Running::start(&config);
    let options = ZOrderOptions {
        columns: vec!["user_id".into()],
        target_size: 64 << 10,
        ..ZOrderOptions::default()
    };
    let mut table = load(&table_path).await;
    let metrics = zorder(&mut table, &options, &|_| {}).await.unwrap();
    appender.finish().await;
    assert_eq!(
        metrics.partitions + metrics.partitions_aborted,
        1,
        "{metrics:?}"
    );
    assert_exactly_once(
        strings(&kernel_read(&table_path).await, "event_id"),
        &expected,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_column_is_not_a_zorder_key() {
    let lake = Lake::new();
    let input = lake.dir.path().join("rides.ndjson");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    let mut events = sluice::demo::events::RideEvents::new(5, 100, 0.0);
    for _ in 0..200 {
        out.write_all(&events.next_event().payload).unwrap();
        out.write_all(b"\n").unwrap();
    }
    out.flush().unwrap();
    drop(out);
    let config = file_config(
        &lake,
        &input,
        "rides",
        "",
        sluice::demo::events::RIDES_TABLE_COLUMNS,
    );
    ingest_to_end(&config).await;
    let mut table = load(&lake.table("rides")).await;
    let options = ZOrderOptions {
        columns: vec!["date".into()],
        ..ZOrderOptions::default()
    };
    let error = zorder(&mut table, &options, &|_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("`date` is a partition column"), "{error}");
}
