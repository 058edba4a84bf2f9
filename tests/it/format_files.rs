//! Backfills in binary formats: Avro object container files written by
//! fastavro (typed by their header's schema) and length-delimited Protobuf
//! written by Google's runtime, read by the file source exactly once, also
//! when the backfill is run again.

use std::process::Command;

use crate::avro::python;
use crate::common::*;

fn script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

fn run(args: &[&str]) {
    let status = Command::new(python()).args(args).status().unwrap();
    assert!(status.success(), "{args:?}");
}

fn file_source_config(lake: &Lake, source: &str) -> sluice::config::Config {
    let text = format!(
        r#"
[lake]
root = "{root}"
[erasure]
enabled = false
[[sources]]
kind = "file"
name = "files"
path = "{input}"
{source}
[[tables]]
name = "rides"
source = "files"
key = "user_id"
"#,
        root = lake.root(),
        input = lake.table("in").display()
    );
    parse_valid(&text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_container_files_are_a_backfill_source() {
    let lake = Lake::new();
    let dir = lake.table("in");
    std::fs::create_dir_all(&dir).unwrap();
    let avro = script("avro_events.py");
    for (name, start, codec) in [("a.avro", "0", "deflate"), ("b.avro", "2500", "null")] {
        let out = dir.join(name);
        run(&[
            avro.to_str().unwrap(),
            "--wire",
            "ocf",
            "--codec",
            codec,
            "--start",
            start,
            "--count",
            "2500",
            "--out",
            out.to_str().unwrap(),
        ]);
    }
    let config = file_source_config(&lake, "format = \"avro\"");
    let stats = ingest_to_end(&config).await;
    assert_eq!(
        (stats.committed, stats.dead_lettered),
        (5000, 0),
        "{stats:?}"
    );
    let expected: Vec<String> = (0..5000).map(|n| format!("e-{n}")).collect();
    let table = lake.table("rides");
    assert_exactly_once(strings(&kernel_read(&table).await, "event_id"), &expected);
    // Run again: nothing is added.
    let again = ingest_to_end(&config).await;
    assert_eq!(again.committed, 0);
    assert_exactly_once(strings(&kernel_read(&table).await, "event_id"), &expected);
    register_for_spark(&table, "avro_files", 5000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_delimited_protobuf_files_are_a_backfill_source() {
    let lake = Lake::new();
    let dir = lake.table("in");
    std::fs::create_dir_all(&dir).unwrap();
    let out = lake.dir.path().join("compiled");
    run(&[
        script("proto_events.py").to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
        "--count",
        "3000",
        "--delimited",
        "--frames",
        dir.join("rides.binpb").to_str().unwrap(),
    ]);
    let source = format!(
        "format = \"protobuf\"\ndescriptor_set = \"{}\"\nmessage = \"rides.v1.RideEvent\"",
        out.join("rides.pb").display()
    );
    let config = file_source_config(&lake, &source);
    let stats = ingest_to_end(&config).await;
    assert_eq!(
        (stats.committed, stats.dead_lettered),
        (3000, 0),
        "{stats:?}"
    );
    let expected: Vec<String> = (0..3000).map(|n| format!("e-{n}")).collect();
    assert_exactly_once(
        strings(&kernel_read(&lake.table("rides")).await, "event_id"),
        &expected,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_container_file_fails_the_run_and_loses_nothing() {
    let lake = Lake::new();
    let dir = lake.table("in");
    std::fs::create_dir_all(&dir).unwrap();
    let avro = script("avro_events.py");
    let out = dir.join("a.avro");
    let write = || {
        run(&[
            avro.to_str().unwrap(),
            "--wire",
            "ocf",
            "--count",
            "2000",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    write();
    // The file ends inside its last block (a copy cut short).
    let whole = std::fs::read(&out).unwrap();
    std::fs::write(&out, &whole[..whole.len() - 100]).unwrap();
    let config = file_source_config(&lake, "format = \"avro\"");
    let failed = Running::start(&config).task.await.unwrap();
    let error = failed
        .expect_err("a damaged file fails the run")
        .to_string();
    assert!(
        error.contains("a.avro") && error.contains("ends early"),
        "{error}"
    );
    let table = lake.table("rides");
    let committed = strings(&kernel_read(&table).await, "event_id");
    assert!(
        !committed.is_empty() && committed.len() < 2000,
        "the blocks before the damage are committed: {}",
        committed.len()
    );
    // The file restored, a re-run completes it exactly once.
    std::fs::write(&out, &whole).unwrap();
    ingest_to_end(&config).await;
    let expected: Vec<String> = (0..2000).map(|n| format!("e-{n}")).collect();
    assert_exactly_once(strings(&kernel_read(&table).await, "event_id"), &expected);
}
