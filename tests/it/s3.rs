//! Tables on S3, through a real S3 API server (moto, started here on
//! 127.0.0.1): two workers share a Kafka topic and one S3 table, one is
//! killed mid-stream and replaced, and every record lands exactly once;
//! maintenance and erasure run against the same store; a wrong endpoint
//! stops startup with an error naming the key.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use delta_kernel::engine::arrow_data::ArrowEngineData;
use delta_kernel::{Engine, Snapshot};
use delta_kernel_default_engine::DefaultEngineBuilder;
use sluice::config::Config;

use crate::common::*;

/// A moto S3 server on a free loopback port, stopped on drop.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    pub fn start() -> Self {
        let server = std::env::var("SLUICE_MOTO_SERVER").unwrap_or_else(|_| {
            format!(
                "{}/.cache/sluice-venv/bin/moto_server",
                std::env::var("HOME").unwrap()
            )
        });
        assert!(
            std::path::Path::new(&server).exists(),
            "no moto_server at {server}: run scripts/test, which installs it (or set SLUICE_MOTO_SERVER)"
        );
        let port = free_port();
        let child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        wait_for_port(port, "moto");
        Self { child, endpoint }
    }

    /// Creates a bucket (moto accepts an unsigned create).
    pub fn bucket(&self, name: &str) {
        use std::io::{Read, Write};
        let address = self.endpoint.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        write!(stream, "PUT /{name} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "create bucket: {response}"
        );
    }

    pub fn options(&self) -> BTreeMap<String, String> {
        [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
            ("aws_region", "us-east-1"),
            ("aws_allow_http", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3_config(moto: &Moto, brokers: &str, topic: &str, endpoint: &str) -> Config {
    let text = format!(
        r#"
[lake]
root = "s3://lake/prod"
storage_options = {{ aws_endpoint = "{endpoint}", aws_access_key_id = "test", aws_secret_access_key = "test", aws_region = "us-east-1", aws_allow_http = "true" }}
[batching]
max_latency = "400ms"
[maintenance]
enabled = false
[erasure]
enabled = false
[[sources]]
kind = "kafka"
name = "k"
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "g-s3"
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}
[[tables]]
name = "events"
source = "k"
{EVENT_COLUMNS}
"#
    );
    let _ = moto;
    parse_valid(&text)
}

/// Every row of the S3 table, read by `delta_kernel` over its own S3 client.
pub async fn kernel_read_s3(moto: &Moto, bucket: &str, url: &str) -> Vec<RecordBatch> {
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&moto.endpoint)
        .with_bucket_name(bucket)
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_region("us-east-1")
        .with_allow_http(true)
        .build()
        .unwrap();
    kernel_read_store(Arc::new(store), url).await
}

/// Every row of the table at `url`, read by `delta_kernel` over `store`.
pub async fn kernel_read_store(
    store: Arc<dyn object_store::ObjectStore>,
    url: &str,
) -> Vec<RecordBatch> {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let engine: Arc<dyn Engine> = Arc::new(DefaultEngineBuilder::new(store).build());
        let snapshot = Snapshot::builder_for(url.as_str())
            .build(engine.as_ref())
            .expect("snapshot");
        let scan = snapshot.scan_builder().build().expect("scan");
        scan.execute(engine.clone())
            .expect("execute")
            .map(|data| {
                ArrowEngineData::try_from_engine_data(data.expect("data"))
                    .expect("arrow")
                    .record_batch()
                    .clone()
            })
            .collect()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_an_s3_table_exactly_once_through_a_crash() {
    let moto = Moto::start();
    moto.bucket("lake");
    let topic = "s3-events";
    let kafka = kafka(topic, 4);
    let config = s3_config(&moto, kafka.bootstrap_servers(), topic, &moto.endpoint);

    let (good, b, c) = crash_and_replace(&kafka, topic, &config).await;
    let total = good.len() as u64;
    let table_url = "s3://lake/prod/events/";
    let url = url::Url::parse(table_url).unwrap();
    wait_for_rows(&url, &moto.options(), total, Duration::from_secs(90)).await;
    b.stop().await;
    c.stop().await;
    let batches = kernel_read_s3(&moto, "lake", table_url).await;
    assert_exactly_once(strings(&batches, "event_id"), &good);

    // Maintenance and erasure against the same store: compaction commits
    // with conditional puts, erasure rewrites and records its ledger on S3.
    let url = url::Url::parse(table_url).unwrap();
    let mut table = sluice::table::open(&url, &moto.options()).await.unwrap();
    let files_before = table.snapshot().unwrap().log_data().num_files();
    let metrics = sluice::maintain::compact::compact(
        &mut table,
        &sluice::maintain::compact::CompactOptions::default(),
        &|_| {},
    )
    .await
    .unwrap();
    assert!(
        metrics.files_in >= 2 && metrics.files_out < files_before as u64,
        "{metrics:?}"
    );
    let key = sluice::erase::keys::SubjectKey::parse("user_id=u-7").unwrap();
    sluice::erase::file_requests(
        &config,
        &[key],
        &sluice::erase::TableChoice::All,
        "t-1",
        chrono::Utc::now().timestamp_millis(),
    )
    .await
    .unwrap();
    let run = sluice::erase::apply_all(&config, chrono::Utc::now().timestamp_millis(), None)
        .await
        .unwrap();
    assert!(run.applied[0].rows_deleted > 0);
    let users = strings(&kernel_read_s3(&moto, "lake", table_url).await, "user_id");
    assert_eq!(users.len() as u64, total - run.applied[0].rows_deleted);
    assert!(users.iter().all(|u| u != "u-7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_fails_fast_naming_the_key() {
    let moto = Moto::start();
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = s3_config(
        &moto,
        "127.0.0.1:9",
        "t",
        &format!("http://127.0.0.1:{closed}"),
    );
    let started = Instant::now();
    let error = sluice::ingest::run(
        &config,
        tokio_util::sync::CancellationToken::new(),
        Arc::new(sluice::telemetry::stats::IngestStats::new()),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("lake.root") && error.contains("lake.storage_options"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // A missing bucket on a live endpoint is refused the same way.
    let config = s3_config(&moto, "127.0.0.1:9", "t", &moto.endpoint);
    let error = sluice::ingest::run(
        &config,
        tokio_util::sync::CancellationToken::new(),
        Arc::new(sluice::telemetry::stats::IngestStats::new()),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(error.contains("lake.root"), "{error}");
}
