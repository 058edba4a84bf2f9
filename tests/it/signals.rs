//! SIGTERM drains: the worker stops consuming, commits what it buffered, and exits 0.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_what_is_buffered_and_exits_zero() {
    let lake = Lake::new();
    let topic = "sigterm";
    let kafka = kafka(topic, 2);
    let expected = produce(&kafka, topic, "s", 2000, 0);
    let config = format!(
        r#"
[lake]
root = "{root}"
[batching]
max_latency = "1h"
[[sources]]
kind = "kafka"
name = "k"
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "g-sigterm"
[[tables]]
name = "events"
source = "k"
{EVENT_COLUMNS}
"#,
        root = lake.root(),
        brokers = kafka.bootstrap_servers()
    );
    let path = lake.dir.path().join("ingest.toml");
    std::fs::write(&path, config).unwrap();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["ingest", "--config"])
        .arg(&path)
        .env("RUST_LOG", "sluice=debug")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Everything is buffered (nothing committed: the latency is an hour) ...
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("buffered=2000") {
                return;
            }
        }
        panic!("ingest exited early");
    })
    .await
    .expect("all records buffered");
    assert!(kernel_read(&lake.table("events"))
        .await
        .iter()
        .all(|b| b.num_rows() == 0));

    // ... when SIGTERM arrives.
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("drains within the grace period")
        .unwrap();
    drain.abort();
    assert!(status.success(), "exit status {status:?}");
    assert_exactly_once(
        strings(&kernel_read(&lake.table("events")).await, "event_id"),
        &expected,
    );
}
