//! Two workers in one consumer group; one leaves mid-stream. Every record
//! lands exactly once, and the table's lineage shows no stale commit.

use std::time::Duration;

use sluice::status::table_status;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_leaving_mid_stream_loses_and_duplicates_nothing() {
    let lake = Lake::new();
    let topic = "rebalance";
    let kafka = kafka(topic, 6);
    let config = kafka_config(
        &lake,
        kafka.bootstrap_servers(),
        topic,
        "g-rebalance",
        "max_latency = \"400ms\"",
        "",
    );

    let first_half = produce(&kafka, topic, "one", 4000, 0);
    let a = Running::start(&config);
    let b = Running::start(&config);
    a.wait_for(Duration::from_secs(60), "both workers committing", |s| {
        s.commits >= 1
    })
    .await;
    b.wait_for(Duration::from_secs(60), "both workers committing", |s| {
        s.commits >= 1
    })
    .await;

    // More records arrive while worker B leaves the group.
    let second_half = produce(&kafka, topic, "two", 4000, 0);
    let b_stats = b.stop().await;
    let third = produce(&kafka, topic, "three", 2000, 0);

    let mut expected = first_half;
    expected.extend(second_half);
    expected.extend(third);
    a.wait_for(Duration::from_secs(90), "A commits the rest", |s| {
        s.committed + b_stats.committed >= expected.len() as u64
    })
    .await;
    let a_stats = a.stop().await;
    assert!(
        b_stats.committed > 0 && a_stats.committed > 0,
        "both workers did work: {a_stats:?} {b_stats:?}"
    );

    let table = lake.table("events");
    assert_exactly_once(strings(&kernel_read(&table).await, "event_id"), &expected);

    let url = url::Url::from_directory_path(table.canonicalize().unwrap()).unwrap();
    let status = table_status(&url, &no_options(), u64::MAX)
        .await
        .expect("status");
    assert_eq!(status.partitions.len(), 6);
    for partition in &status.partitions {
        assert!(partition.contiguous, "{partition:?}");
        assert!(partition.counts_add_up, "{partition:?}");
    }
    let committed: u64 = status.partitions.iter().map(|p| p.committed).sum();
    assert_eq!(committed as usize, expected.len());
    register_for_spark(&table, "rebalance", expected.len());
}
