//! SIGTERM drains: the worker stops consuming, commits what it buffered, and exits 0.

use std::process::Stdio;
use std::time::Duration;

use sluice::demo::broker::EmbeddedKafka;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStderr;

use crate::common::*;

/// A worker reading `topic` into the table `events` with an hour's latency
/// (nothing commits before it stops), started on `kafka` with debug logs.
fn start_worker(lake: &Lake, kafka: &EmbeddedKafka, topic: &str) -> tokio::process::Child {
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
group_id = "g-{topic}"
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
    tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["ingest", "--config"])
        .arg(&path)
        .env("RUST_LOG", "sluice=debug")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Reads the worker's log until it has buffered `count` records.
async fn buffered(lines: &mut Lines<BufReader<ChildStderr>>, count: usize) {
    let wanted = format!("buffered={count}");
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(&wanted) {
                return;
            }
        }
        panic!("ingest exited early");
    })
    .await
    .expect("all records buffered");
}

/// Sends SIGTERM and waits for the worker to exit 0.
async fn terminate(child: &mut tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("drains within the grace period")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_what_is_buffered_and_exits_zero() {
    let lake = Lake::new();
    let topic = "sigterm";
    let kafka = kafka(topic, 2);
    let expected = produce(&kafka, topic, "s", 2000, 0);
    let mut child = start_worker(&lake, &kafka, topic);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Everything is buffered (nothing committed: the latency is an hour) ...
    buffered(&mut lines, 2000).await;
    assert!(kernel_read(&lake.table("events"))
        .await
        .iter()
        .all(|b| b.num_rows() == 0));

    // ... when SIGTERM arrives.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    terminate(&mut child).await;
    drain.abort();
    assert_exactly_once(
        strings(&kernel_read(&lake.table("events")).await, "event_id"),
        &expected,
    );
}

/// A log collector that goes away (the pipe behind stderr closes) costs the
/// worker its log lines, not its work: a failed write does not panic the
/// thread that logged, so the drain on SIGTERM still commits everything
/// and exits 0. (A panic in the consumer's rebalance callback used to leave
/// the Kafka client's close waiting forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_log_pipe_does_not_stop_the_drain() {
    let lake = Lake::new();
    let topic = "closed-log";
    let kafka = kafka(topic, 2);
    let expected = produce(&kafka, topic, "c", 2000, 0);
    let mut child = start_worker(&lake, &kafka, topic);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    buffered(&mut lines, 2000).await;
    drop(lines);

    terminate(&mut child).await;
    assert_exactly_once(
        strings(&kernel_read(&lake.table("events")).await, "event_id"),
        &expected,
    );
}
