//! GDPR erasure: request -> apply -> purge -> verify on tables written by
//! the ingest path, with concurrent appends, late records, a batch of 1,000
//! keys, crashes between steps, and bad input.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use sluice::config::Config;
use sluice::erase::keys::SubjectKey;
use sluice::erase::ledger::{Ledger, State};
use sluice::erase::{self, CrashPoint, EraseError, TableChoice};

use crate::common::*;

const DAY_MS: i64 = 24 * 3600 * 1000;

pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `lines` events; user of line `n` is `user(n)`.
pub(crate) fn write_lines(
    dir: &Path,
    name: &str,
    lines: usize,
    user: impl Fn(usize) -> String,
) -> Vec<(String, String)> {
    std::fs::create_dir_all(dir).unwrap();
    let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join(name)).unwrap());
    let mut rows = Vec::new();
    for n in 0..lines {
        let (id, user) = (format!("e-{name}-{n}"), user(n));
        writeln!(
            out,
            r#"{{"event_id":"{id}","user_id":"{user}","amount":{n}.0,"event_time":"2024-05-01T12:00:00Z"}}"#
        )
        .unwrap();
        rows.push((id, user));
    }
    rows
}

pub(crate) fn key(text: &str) -> SubjectKey {
    SubjectKey::parse(text).unwrap()
}

/// (event ids, user ids) of the current version, through `delta_kernel`.
pub(crate) async fn rows(table: &Path) -> Vec<(String, String)> {
    let batches = kernel_read(table).await;
    strings(&batches, "event_id")
        .into_iter()
        .zip(strings(&batches, "user_id"))
        .collect()
}

pub(crate) async fn request(config: &Config, keys: &[&str], at: i64) -> Vec<String> {
    let keys: Vec<SubjectKey> = keys.iter().map(|k| key(k)).collect();
    erase::file_requests(config, &keys, &TableChoice::All, "ticket-1", at)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.id)
        .collect()
}

pub(crate) async fn ledger_requests(config: &Config) -> Vec<sluice::erase::ledger::Request> {
    let mut ledger = Ledger::open(&config.lake.root, &config.lake.storage_options)
        .await
        .unwrap()
        .expect("ledger exists");
    ledger.requests().await.unwrap()
}

/// Every file under `root` whose raw bytes contain `needle`.
pub(crate) fn raw_hits(root: &Path, needle: &str) -> Vec<String> {
    files_under(root)
        .into_iter()
        .filter(|path| {
            let bytes = std::fs::read(path).unwrap();
            bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
        .map(|path| path.display().to_string())
        .collect()
}

/// Every Parquet file under `root` (data files, removed or not, and
/// checkpoints with their nested stats) holding a string equal to `needle`,
/// decoded independently.
pub(crate) fn parquet_values_equal(root: &Path, needle: &str) -> Vec<String> {
    use arrow::array::{Array, AsArray};
    fn walk(array: &dyn Array, needle: &str) -> bool {
        match array.data_type() {
            arrow::datatypes::DataType::Struct(_) => array
                .as_struct()
                .columns()
                .iter()
                .any(|c| walk(c.as_ref(), needle)),
            arrow::datatypes::DataType::Utf8 => array
                .as_string::<i32>()
                .iter()
                .flatten()
                .any(|v| v == needle),
            _ => false,
        }
    }
    files_under(root)
        .into_iter()
        .filter(|path| path.to_string_lossy().ends_with(".parquet"))
        .filter(|path| {
            let file = std::fs::File::open(path).unwrap();
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap()
                .any(|batch| {
                    batch
                        .unwrap()
                        .columns()
                        .iter()
                        .any(|c| walk(c.as_ref(), needle))
                })
        })
        .map(|path| path.display().to_string())
        .collect()
}

pub(crate) fn file_lake(lake: &Lake, batching: &str) -> Config {
    let mut config = file_config(lake, &lake.table("in"), "events", batching, EVENT_COLUMNS);
    config.erasure.enabled = false;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_apply_purge_verify_leaves_no_trace() {
    let lake = Lake::new();
    // "user-00000" is the smallest user of every file, so it sits in the
    // min statistics of every add action in the log and in checkpoints.
    let written = write_lines(&lake.table("in"), "a.ndjson", 4000, |n| {
        format!("user-{:05}", n % 40)
    });
    // Malformed records go to the dead-letter table, raw: three hold the key.
    let mut bad = std::fs::File::create(lake.table("in").join("b.ndjson")).unwrap();
    for (n, user) in ["user-00000", "user-00001", "user-00000", "user-00000"]
        .iter()
        .enumerate()
    {
        writeln!(
            bad,
            r#"{{"event_id":"bad-{n}","user_id":"{user}","amount":"lots"}}"#
        )
        .unwrap();
    }
    drop(bad);
    let config = file_lake(&lake, "max_rows = 250");
    ingest_to_end(&config).await;
    let table = lake.table("events");
    let target = "user-00000";
    let before = rows(&table).await;
    assert_eq!(before.len(), 4000);
    assert!(
        !raw_hits(&table.join("_delta_log"), target).is_empty(),
        "stats hold the key before erasure"
    );

    let t0 = now();
    let ids = request(&config, &[&format!("user_id={target}")], t0).await;
    assert_eq!(ledger_requests(&config).await[0].state(), State::Requested);

    let run = erase::apply_all(&config, t0, None).await.unwrap();
    assert_eq!(run.applied[0].rows_deleted, 100);
    assert_eq!(run.applied[1].table, "events.dead_letters");
    assert_eq!(
        run.applied[1].rows_deleted, 3,
        "dead letters holding the key are erased too"
    );
    let dead = strings(
        &kernel_read(&lake.table("events_dead_letters")).await,
        "payload_text",
    );
    assert_eq!(dead.len(), 1);
    assert!(dead[0].contains("user-00001"));
    assert!(run.purged.is_empty(), "nothing is due before the retention");
    let after = rows(&table).await;
    assert!(
        after.iter().all(|(_, u)| u != target),
        "the key's rows are gone"
    );
    let expected: Vec<String> = written
        .iter()
        .filter(|(_, u)| u != target)
        .map(|(id, _)| id.clone())
        .collect();
    assert_exactly_once(after.into_iter().map(|(id, _)| id).collect(), &expected);
    assert_eq!(ledger_requests(&config).await[0].state(), State::Deleted);

    // Before the purge the removed files and the log still hold the key: verification fails.
    let early = erase::verify_request(&config, &ids[0], true, t0)
        .await
        .unwrap();
    assert!(!early.passed);
    assert!(
        early.tables[0]
            .hits
            .iter()
            .any(|h| h.object.starts_with("_delta_log/")),
        "{:?}",
        early.tables[0].hits
    );
    assert!(early.tables[0]
        .hits
        .iter()
        .any(|h| h.object.ends_with(".parquet") && !h.object.starts_with("_delta_log")));

    // Eight days later (retention: 7 days) the purge vacuums and cuts the log.
    let later = t0 + 8 * DAY_MS;
    let run = erase::apply_all(&config, later, None).await.unwrap();
    assert_eq!(
        run.purged.len(),
        2,
        "{run:?} {:?}",
        ledger_requests(&config).await
    );
    assert!(run.purged[0].files_vacuumed >= 16, "{:?}", run.purged[0]);
    assert!(run.purged[0].log_files_deleted > 0);
    assert_exactly_once(
        rows(&table).await.into_iter().map(|(id, _)| id).collect(),
        &expected,
    );

    let verified = erase::verify_request(&config, &ids[0], true, later)
        .await
        .unwrap();
    assert!(verified.passed, "{:?}", verified.tables);
    assert!(verified.tables[0].objects_scanned > 2);
    assert_eq!(verified.tables[1].table, "events.dead_letters");
    assert!(verified.tables[1].objects_scanned > 0);
    assert_eq!(
        raw_hits(&lake.table("events_dead_letters"), target),
        Vec::<String>::new()
    );
    assert_eq!(ledger_requests(&config).await[0].state(), State::Verified);
    // Independent checks: no object's bytes, and no decoded Parquet value, hold the key.
    assert_eq!(raw_hits(&table, target), Vec::<String>::new());
    assert_eq!(parquet_values_equal(&table, target), Vec::<String>::new());
    // Time travel to before the erasure ended with the purge.
    let mut old = load(&table).await;
    assert!(
        old.load_version(1).await.is_err(),
        "pre-erasure versions are gone"
    );

    let requests = ledger_requests(&config).await;
    let receipt = sluice::erase::receipt::receipt(&requests[0], later);
    assert_eq!(receipt["state"], "verified");
    assert_eq!(receipt["tables"][0]["rows_deleted"], 100);
    assert_eq!(receipt["verification"]["passed"], true);
    assert!(
        receipt["tables"][0]["purge"]["log_files_deleted"]
            .as_u64()
            .unwrap()
            > 0
    );
    register_for_spark(&table, "erased", expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_lands_during_appends_and_late_records_are_suppressed() {
    let lake = Lake::new();
    let topic = "erase-live";
    let kafka = std::sync::Arc::new(kafka(topic, 2));
    let mut config = kafka_config(
        &lake,
        kafka.bootstrap_servers(),
        topic,
        "g-erase",
        "max_latency = \"700ms\"",
        "",
    );
    config.erasure.enabled = false;
    config.erasure.suppression_refresh = sluice::config::Span(Duration::from_millis(500));
    let running = Running::start(&config);
    let mut good = produce(&kafka, topic, "a", 2000, 0);
    running
        .wait_for(Duration::from_secs(60), "first rows", |s| {
            s.committed >= 2000
        })
        .await;

    // Appends keep landing (a commit every ~0.7s) while the erasure applies.
    let producing = {
        let kafka = kafka.clone();
        tokio::task::spawn_blocking(move || {
            let mut ids = Vec::new();
            for round in 0..12 {
                ids.extend(produce(&kafka, topic, &format!("b{round}"), 200, 0));
                std::thread::sleep(Duration::from_millis(250));
            }
            ids
        })
    };
    let target = "u-13";
    let t0 = now();
    request(&config, &[&format!("user_id={target}")], t0).await;
    let run = erase::apply_all(&config, t0, None).await.unwrap();
    assert!(
        run.applied[0].version.is_some(),
        "the delete committed while appends landed"
    );
    good.extend(producing.await.unwrap());

    // After the ingest process has re-read the ledger, new records of the key are dropped.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let late = produce(&kafka, topic, "late", 970, 0);
    good.extend(late);
    let total = good.len() as u64;
    running
        .wait_for(Duration::from_secs(60), "late rows", |s| {
            s.committed + s.suppressed >= total
        })
        .await;
    let stats = running.stop().await;
    assert!(
        stats.suppressed >= 10,
        "late records of the key were suppressed: {stats:?}"
    );

    // Records that landed before the refresh are caught by the next run.
    erase::apply_all(&config, now(), None).await.unwrap();
    let table = lake.table("events");
    let after = rows(&table).await;
    assert!(
        after.iter().all(|(_, u)| u != target),
        "no row of the key is left"
    );
    let kept: Vec<String> = good
        .iter()
        .filter(|id| {
            let n: usize = id.rsplit('-').next().unwrap().parse().unwrap();
            format!("u-{}", n % 97) != target
        })
        .cloned()
        .collect();
    assert_exactly_once(after.into_iter().map(|(id, _)| id).collect(), &kept);
    let status = sluice::status::table_status(
        &url::Url::from_directory_path(table.canonicalize().unwrap()).unwrap(),
        &no_options(),
        1 << 20,
    )
    .await
    .unwrap();
    assert!(
        status
            .partitions
            .iter()
            .all(|p| p.counts_add_up && p.contiguous),
        "{:?}",
        status.partitions
    );
    let suppressed: u64 = status.partitions.iter().map(|p| p.suppressed).sum();
    assert_eq!(
        suppressed, stats.suppressed,
        "the lineage counts suppressed records"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_keys_rewrite_each_affected_file_once() {
    let lake = Lake::new();
    // 40 files of 250 consecutive even user numbers each: a file's min/max
    // admits the odd numbers between, which its bloom filter rules out.
    write_lines(&lake.table("in"), "a.ndjson", 10_000, |n| {
        format!("user-{:06}", 2 * n)
    });
    let config = file_lake(&lake, "max_rows = 250");
    ingest_to_end(&config).await;
    let table = lake.table("events");
    let files_before = live_paths(&table).await;
    assert_eq!(files_before.len(), 40);

    // Six real users (two share a file, the rest in four other files) and 994 absent ones.
    let real = [10, 12, 2600, 7000, 13_000, 19_998];
    let mut keys: Vec<String> = real
        .iter()
        .map(|n| format!("user_id=user-{n:06}"))
        .collect();
    keys.extend((0..994).map(|i| format!("user_id=user-{:06}", 20 * i + 1)));
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    request(&config, &keys, now()).await;
    let run = erase::apply_all(&config, now(), None).await.unwrap();
    let report = &run.applied[0];
    assert_eq!(report.keys, 1000);
    assert_eq!(report.rows_deleted, 6);
    assert_eq!(
        report.files_in_range, 40,
        "every file's range admits some absent key"
    );
    assert!(
        report.files_read < 20,
        "bloom filters ruled out most files: {report:?}"
    );
    assert_eq!(report.files_rewritten, 5, "{report:?}");

    let deletes = commits_with_operation(&table, "DELETE");
    assert_eq!(deletes.len(), 1, "one commit for the whole batch");
    let removed: Vec<String> = deletes[0]
        .iter()
        .filter_map(|a| a["remove"]["path"].as_str().map(str::to_string))
        .collect();
    let unique: std::collections::BTreeSet<&String> = removed.iter().collect();
    assert_eq!(unique.len(), removed.len(), "no file rewritten twice");
    assert_eq!(removed.len(), 5);
    let files_after = live_paths(&table).await;
    let untouched = files_before
        .iter()
        .filter(|f| files_after.contains(*f))
        .count();
    assert_eq!(untouched, 35, "every file without a key is left alone");
    assert_eq!(rows(&table).await.len(), 10_000 - 6);
    let log_text = serde_json::Value::Array(deletes[0].clone()).to_string();
    assert!(
        !log_text.contains("user-000010"),
        "the delete commit names no key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_resumes_after_a_crash_between_any_two_steps() {
    for crash in [
        CrashPoint::AfterIntent,
        CrashPoint::AfterCommit,
        CrashPoint::AfterVacuum,
    ] {
        let lake = Lake::new();
        write_lines(&lake.table("in"), "a.ndjson", 600, |n| {
            format!("user-{:03}", n % 30)
        });
        let config = file_lake(&lake, "max_rows = 200");
        ingest_to_end(&config).await;
        let table = lake.table("events");
        let t0 = now();
        let ids = request(&config, &["user_id=user-007", "user_id=user-011"], t0).await;
        let (apply_at, purge_at) = (t0, t0 + 8 * DAY_MS);
        if crash == CrashPoint::AfterVacuum {
            erase::apply_all(&config, apply_at, None).await.unwrap();
            let failed = erase::apply_all(&config, purge_at, Some(crash)).await;
            assert!(matches!(failed, Err(EraseError::Crashed(_))), "{failed:?}");
            assert!(ledger_requests(&config)
                .await
                .iter()
                .all(|r| r.state() == State::Deleted));
        } else {
            let failed = erase::apply_all(&config, apply_at, Some(crash)).await;
            assert!(matches!(failed, Err(EraseError::Crashed(_))), "{failed:?}");
            let deletes = commits_with_operation(&table, "DELETE").len();
            assert_eq!(
                deletes,
                usize::from(crash == CrashPoint::AfterCommit),
                "{crash:?}"
            );
            assert!(ledger_requests(&config)
                .await
                .iter()
                .all(|r| r.state() == State::Requested));
            // Resume.
            erase::apply_all(&config, apply_at, None).await.unwrap();
        }
        assert_eq!(
            commits_with_operation(&table, "DELETE").len(),
            1,
            "{crash:?}: applied exactly once"
        );
        let remaining = rows(&table).await;
        assert_eq!(remaining.len(), 600 - 40, "{crash:?}");
        let requests = ledger_requests(&config).await;
        for r in &requests {
            let deletions = &r.tables["events"].deletions;
            assert_eq!(deletions.len(), 1, "{crash:?}: one deletion per request");
            assert_eq!(deletions[0].rows_deleted, 20, "{crash:?}: counts recovered");
        }
        erase::apply_all(&config, purge_at, None).await.unwrap();
        assert_eq!(rows(&table).await.len(), 560, "{crash:?}");
        for id in &ids {
            let verified = erase::verify_request(&config, id, false, purge_at)
                .await
                .unwrap();
            assert!(verified.passed, "{crash:?}: {:?}", verified.tables);
        }
        assert!(ledger_requests(&config)
            .await
            .iter()
            .all(|r| r.state() == State::Verified));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integer_keys_are_erased_and_bad_input_records_nothing() {
    let lake = Lake::new();
    let dir = lake.table("in");
    std::fs::create_dir_all(&dir).unwrap();
    let mut out = std::fs::File::create(dir.join("a.ndjson")).unwrap();
    for n in 0..300 {
        writeln!(
            out,
            r#"{{"event_id":"e-{n}","account":{},"note":"n"}}"#,
            n % 10
        )
        .unwrap();
    }
    drop(out);
    let columns = r#"
key = "account"
columns = [
  { name = "event_id", type = "string", nullable = false },
  { name = "account", type = "long", nullable = false },
  { name = "note", type = "string" },
]
"#;
    let mut config = file_config(&lake, &dir, "accounts", "max_rows = 100", columns);
    config.erasure.enabled = false;
    ingest_to_end(&config).await;
    let ledger_dir = lake.table("_sluice_erasure");

    let cases: Vec<(Vec<SubjectKey>, TableChoice, &str, &str)> = vec![
        (
            vec![key("account=7")],
            TableChoice::Named(vec!["nope".into()]),
            "r",
            "unknown table `nope`",
        ),
        (
            vec![key("user=7")],
            TableChoice::All,
            "r",
            "no configured table has a column `user`",
        ),
        (
            vec![key("account=seven")],
            TableChoice::All,
            "r",
            "`seven` is not an integer",
        ),
        (
            vec![key("note=x")],
            TableChoice::Named(vec!["accounts".into()]),
            "",
            "--reason",
        ),
        (vec![], TableChoice::All, "r", "no keys given"),
    ];
    for (keys, tables, reason, expected) in cases {
        let error = erase::file_requests(&config, &keys, &tables, reason, now())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(expected),
            "{error} should mention {expected}"
        );
        assert!(!ledger_dir.exists(), "nothing recorded after: {error}");
    }
    let file = lake.table("keys.txt");
    std::fs::write(&file, "# keys\naccount=3\naccount\n").unwrap();
    let error = sluice::erase::keys::read_keys_file(&file)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("keys.txt:3") && error.contains("column=value"),
        "{error}"
    );
    assert!(SubjectKey::parse("account=").is_err());

    std::fs::write(&file, "account=3\n\naccount=4\n").unwrap();
    let keys = sluice::erase::keys::read_keys_file(&file).unwrap();
    erase::file_requests(&config, &keys, &TableChoice::All, "ticket-9", now())
        .await
        .unwrap();
    let again = erase::file_requests(&config, &keys[..1], &TableChoice::All, "ticket-9", now())
        .await
        .unwrap();
    assert!(!again[0].new, "filing the same key twice is idempotent");
    assert_eq!(ledger_requests(&config).await.len(), 2);
    let run = erase::apply_all(&config, now(), None).await.unwrap();
    assert_eq!(run.applied[0].rows_deleted, 60);
    let batches = kernel_read(&lake.table("accounts")).await;
    let accounts = strings(&batches, "account");
    assert_eq!(accounts.len(), 240);
    assert!(accounts.iter().all(|a| a != "3" && a != "4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_process_applies_requests_in_the_background() {
    let lake = Lake::new();
    let topic = "erase-loop";
    let kafka = kafka(topic, 1);
    let mut config = kafka_config(
        &lake,
        kafka.bootstrap_servers(),
        topic,
        "g-erase-loop",
        "max_latency = \"500ms\"",
        "",
    );
    config.erasure.interval = sluice::config::Span(Duration::from_secs(1));
    let running = Running::start(&config);
    let good = produce(&kafka, topic, "a", 970, 0);
    running
        .wait_for(Duration::from_secs(60), "rows", |s| s.committed >= 970)
        .await;
    request(&config, &["user_id=u-5"], now()).await;
    let table = lake.table("events");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = rows(&table).await;
        if left.iter().all(|(_, u)| u != "u-5") {
            assert_eq!(
                left.len(),
                good.len() - 10,
                "only the key's rows were deleted"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the background loop did not apply the request"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    running.stop().await;
    let requests = ledger_requests(&config).await;
    assert_eq!(requests[0].tables["events"].deletions.len(), 1);
    assert!(requests[0].tables["events"].deletions[0].version.is_some());
}

/// A worker stopped in the middle of an erasure run finishes the table it
/// is on: the table never shows a key's deletion that the ledger has not
/// recorded (and the other way round). The stops land at a spread of
/// moments through the runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_an_erasure_run_keeps_the_table_and_the_ledger_in_step() {
    let lake = Lake::new();
    write_lines(&lake.table("in"), "a.ndjson", 4000, |n| {
        format!("user-{:05}", n % 40)
    });
    let mut config = file_lake(&lake, "max_rows = 250");
    ingest_to_end(&config).await;
    config.erasure.interval = sluice::config::Span(Duration::from_millis(1));
    let table = lake.table("events");
    let (mut before, mut after) = (0, 0);
    for n in 0..30u64 {
        let user = format!("user-{n:05}");
        let id = request(&config, &[&format!("user_id={user}")], now()).await[0].clone();
        let stop = tokio_util::sync::CancellationToken::new();
        let run = erase::spawn_loop(config.clone(), "w".into(), stop.clone());
        tokio::time::sleep(Duration::from_millis(15 * n)).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the loop stops")
            .unwrap();
        let erased = rows(&table).await.iter().all(|(_, u)| *u != user);
        let requests = ledger_requests(&config).await;
        let request = requests.iter().find(|r| r.id == id).unwrap();
        let recorded = request
            .tables
            .get("events")
            .is_some_and(|t| !t.deletions.is_empty());
        assert_eq!(
            erased,
            recorded,
            "stop after {} ms: {user} erased from the table: {erased}, in the ledger: {recorded}",
            15 * n
        );
        if erased {
            after += 1;
        } else {
            before += 1;
        }
    }
    // Stops that land while a run applies the table let it finish there
    // (a run takes longer than the latest stop here, so a stop that
    // abandoned the run would leave every key in place).
    assert!(
        after > 0,
        "stopped before the table {before} times, after {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_compacts_itself_and_keeps_every_event() {
    let lake = Lake::new();
    write_lines(&lake.table("in"), "a.ndjson", 10, |n| format!("u-{n}"));
    let config = file_lake(&lake, "max_rows = 100");
    ingest_to_end(&config).await;
    for n in 0..70 {
        request(&config, &[&format!("user_id=u-{n}")], now()).await;
    }
    // 70 appends, one file each: the ledger packed them on the way.
    let ledger_dir = lake.table("_sluice_erasure");
    let files = live_paths(&ledger_dir).await.len();
    assert!(files < 64, "the ledger was compacted: {files} files");
    assert_eq!(ledger_requests(&config).await.len(), 70, "no event lost");
}
