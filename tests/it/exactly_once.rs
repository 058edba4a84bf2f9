//! Exactly once under failure: a worker killed before or after a commit, then
//! restarted, leaves every produced record in the table exactly once.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_before_commit_then_restarted_commits_everything_once() {
    test_log();
    let lake = Lake::new();
    let kafka = kafka("eo-before", 4);
    let expected = produce(&kafka, "eo-before", "b", 3000, 0);

    // A long latency: the batch is still buffered when the worker dies.
    let slow = kafka_config(
        &lake,
        kafka.bootstrap_servers(),
        "eo-before",
        "g-before",
        "max_latency = \"1h\"",
        "",
    );
    let first = Running::start(&slow);
    first
        .wait_for(Duration::from_secs(60), "all records received", |s| {
            s.received >= 3000
        })
        .await;
    let killed = first.kill().await;
    assert_eq!(killed.commits, 0, "nothing may commit before the kill");
    assert!(kernel_read(&lake.table("events"))
        .await
        .iter()
        .all(|b| b.num_rows() == 0));

    let fast = kafka_config(
        &lake,
        kafka.bootstrap_servers(),
        "eo-before",
        "g-before",
        "max_latency = \"300ms\"",
        "",
    );
    let second = Running::start(&fast);
    second
        .wait_for(Duration::from_secs(60), "all rows committed", |s| {
            s.committed >= 3000
        })
        .await;
    second.stop().await;

    let rows = kernel_read(&lake.table("events")).await;
    assert_exactly_once(strings(&rows, "event_id"), &expected);
    register_for_spark(&lake.table("events"), "exactly_once_before", expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_commits_then_restarted_neither_loses_nor_duplicates() {
    let lake = Lake::new();
    let kafka = kafka("eo-after", 3);
    let config = kafka_config(
        &lake,
        kafka.bootstrap_servers(),
        "eo-after",
        "g-after",
        "max_rows = 700\nmax_latency = \"1h\"",
        "",
    );
    let mut expected = Vec::new();
    let mut produced = 0;
    for round in 0..3 {
        // A new wave of records, then a worker that dies right after its first commit lands.
        let wave = produce(&kafka, "eo-after", &format!("w{round}"), 2000, 50);
        produced += 2000;
        expected.extend(wave);
        let run = Running::start(&config);
        run.wait_for(Duration::from_secs(60), "a commit", |s| s.commits >= 1)
            .await;
        let stats = run.kill().await;
        eprintln!("round {round}: killed after {stats:?}");
    }
    let bad = produced - expected.len();
    let fast = kafka_config(
        &lake,
        kafka.bootstrap_servers(),
        "eo-after",
        "g-after",
        "max_latency = \"300ms\"",
        "",
    );
    let last = Running::start(&fast);
    let table = lake.table("events");
    // Wait for the table (not this run's counters) to hold everything.
    tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let rows: usize = kernel_read(&table).await.iter().map(|b| b.num_rows()).sum();
            if rows >= expected.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await
    .expect("all rows committed after restarts");
    last.stop().await;

    assert_exactly_once(strings(&kernel_read(&table).await, "event_id"), &expected);
    let dead = kernel_read(&lake.table("events_dead_letters")).await;
    let positions: Vec<String> = strings(&dead, "partition")
        .into_iter()
        .zip(strings(&dead, "position"))
        .map(|(partition, position)| format!("{partition}:{position}"))
        .collect();
    let mut unique = positions.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        positions.len(),
        "no dead letter written twice"
    );
    assert_eq!(positions.len(), bad, "every bad record dead-lettered once");
    register_for_spark(&table, "exactly_once_after", expected.len());
}

/// A panic in the Kafka source thread stops the worker loudly: the records
/// it had handed on are committed exactly once, the run ends with an error
/// that names the source, and the consumer closes instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_source_thread_fails_the_run_after_committing_what_it_handed_on() {
    test_log();
    let lake = Lake::new();
    let kafka = kafka("eo-panic", 2);
    let expected = produce(&kafka, "eo-panic", "p", 500, 0);
    let config = kafka_config(
        &lake,
        kafka.bootstrap_servers(),
        "eo-panic",
        "g-panic",
        "max_latency = \"1h\"",
        "",
    );
    let run = Running::start(&config);
    run.wait_for(Duration::from_secs(60), "the first records", |s| {
        s.received >= 500
    })
    .await;
    sluice::source::kafka::panic_at_next_record("k");
    produce(&kafka, "eo-panic", "after", 100, 0);

    let ended = tokio::time::timeout(Duration::from_secs(60), run.task)
        .await
        .expect("the run ends by itself, without a stop, and the consumer closes")
        .expect("ingest task did not panic");
    let error = ended
        .expect_err("a panicked source fails the run")
        .to_string();
    assert!(
        error.contains("Kafka source `k` stopped on an internal error")
            && error.contains("injected for a test"),
        "{error}"
    );
    // Nothing was committed before the panic (latency 1h): what is in the
    // table is what the source handed on before it, once.
    assert_exactly_once(
        strings(&kernel_read(&lake.table("events")).await, "event_id"),
        &expected,
    );
}
