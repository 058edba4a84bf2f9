//! A fleet: three `sluice serve` processes on one Kafka topic and one
//! Kinesis stream (kinesalite), both feeding one table on S3 (moto). One is
//! killed with SIGKILL mid-stream and started again; every record lands
//! exactly once and the table's lineage shows no stale or overlapping commit
//! on any of its ten partitions (six Kafka partitions, four shards).

use std::time::{Duration, Instant};

use crate::common::*;
use crate::kinesis::{create_stream, put_events, Kinesalite};
use crate::s3::{kernel_read_s3, Moto};
use crate::serve::{value, ServeProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_on_s3_survive_a_kill_9_exactly_once() {
    let moto = Moto::start();
    moto.bucket("fleet");
    let lake = Lake::new();
    let topic = "fleet";
    let kafka = std::sync::Arc::new(kafka(topic, 6));
    let kinesis = Kinesalite::start();
    let kinesis_client = kinesis.client();
    create_stream(&kinesis_client, "fleet", 4).await;
    let config_path = lake.dir.path().join("fleet.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"
[lake]
root = "s3://fleet/lake"
storage_options = {{ aws_endpoint = "{endpoint}", aws_access_key_id = "test", aws_secret_access_key = "test", aws_region = "us-east-1", aws_allow_http = "true" }}
[batching]
max_latency = "300ms"
shutdown_grace = "10s"
[service]
drain_delay = "0s"
[maintenance]
enabled = false
[[sources]]
kind = "kafka"
name = "k"
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "g-fleet"
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}
{kinesis_source}
[[tables]]
name = "events"
source = ["k", "ks"]
{EVENT_COLUMNS}
"#,
            endpoint = moto.endpoint,
            brokers = kafka.bootstrap_servers(),
            kinesis_source = kinesis.source("ks", "fleet"),
        ),
    )
    .unwrap();

    let workers: Vec<ServeProcess> = (0..3).map(|_| ServeProcess::start(&config_path)).collect();
    for w in &workers {
        w.wait_ready();
    }
    let producing = {
        let kafka = kafka.clone();
        tokio::task::spawn_blocking(move || {
            let mut ids = Vec::new();
            for round in 0..8 {
                ids.extend(produce(&kafka, topic, &format!("r{round}"), 1000, 0));
                std::thread::sleep(Duration::from_millis(400));
            }
            ids
        })
    };
    let mut orders = put_events(&kinesis_client, "fleet", "a", 50, 6, 0).await;
    // Kill one worker with SIGKILL once it has committed something.
    let mut workers = workers;
    let mut victim = workers.remove(1);
    let started = Instant::now();
    while value(&victim.scrape(), "sluice_commits_total").unwrap_or(0.0) < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the victim never committed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    orders.extend(put_events(&kinesis_client, "fleet", "b", 50, 6, 6).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Restarted under its id, it rejoins the group as the member it was.
    let restarted = ServeProcess::start_as(&config_path, &victim.worker);
    restarted.wait_ready();
    workers.push(restarted);
    let good = producing.await.unwrap();

    let url = url::Url::parse("s3://fleet/lake/events/").unwrap();
    let mut expected = good;
    expected.extend(orders);
    wait_for_rows(
        &url,
        &moto.options(),
        expected.len() as u64,
        Duration::from_secs(120),
    )
    .await;
    for w in workers {
        assert!(w.terminate().success());
    }
    let batches = kernel_read_s3(&moto, "fleet", url.as_str()).await;
    assert_exactly_once(strings(&batches, "event_id"), &expected);
    let status = sluice::status::table_status(&url, &moto.options(), 1 << 20)
        .await
        .unwrap();
    let streams: Vec<_> = status
        .partitions
        .iter()
        .map(|p| p.app_id.as_str())
        .collect();
    let kafka_partitions = streams
        .iter()
        .filter(|a| a.starts_with("sluice/k/"))
        .count();
    let shards = streams
        .iter()
        .filter(|a| a.starts_with("sluice/ks/"))
        .count();
    assert_eq!((kafka_partitions, shards), (6, 4), "{streams:?}");
    for p in &status.partitions {
        assert!(p.contiguous && p.counts_add_up, "{p:?}");
    }
}
