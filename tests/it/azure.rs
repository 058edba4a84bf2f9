//! Tables on Azure Blob Storage, through Azurite (Microsoft's storage
//! emulator, from npm, started here on 127.0.0.1; it honours create-only
//! writes, `If-None-Match: *`, as the real service does): two workers share
//! a Kafka topic and one table, one is killed mid-stream and replaced, and
//! every record lands exactly once; compaction, and an erasure request
//! through apply, purge (short retentions on the real clock) and verify;
//! four writers racing for one partition land exactly one commit, on an
//! `abfss://` URL.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use sluice::config::Config;
use sluice::erase::ledger::State;

use crate::common::*;

/// Azurite's well-known development account.
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// An Azurite blob server on a free loopback port, stopped on drop.
pub struct Azurite {
    child: Child,
    /// `http://127.0.0.1:<port>/devstoreaccount1`.
    pub endpoint: String,
}

impl Azurite {
    pub fn start() -> Self {
        let dir = std::env::var("SLUICE_AZURITE_DIR").unwrap_or_else(|_| {
            format!("{}/.cache/sluice-azurite", std::env::var("HOME").unwrap())
        });
        let binary = Path::new(&dir).join("node_modules/.bin/azurite-blob");
        assert!(
            binary.exists(),
            "no Azurite under {dir}: run scripts/test, which installs it (or set SLUICE_AZURITE_DIR)"
        );
        let port = free_port();
        let child = Command::new(binary)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--inMemoryPersistence", "--skipApiVersionCheck", "--silent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite");
        wait_for_port(port, "Azurite");
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}/{ACCOUNT}"),
        }
    }

    /// Creates a container with Microsoft's own client (`azure-storage-blob`).
    pub fn container(&self, name: &str) {
        let script = format!(
            "from azure.storage.blob import BlobServiceClient\n\
             BlobServiceClient.from_connection_string('DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={}').create_container('{name}')\n",
            self.endpoint
        );
        let output = Command::new(crate::avro::python())
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn options(&self) -> BTreeMap<String, String> {
        [
            ("azure_storage_account_name", ACCOUNT),
            ("azure_storage_account_key", KEY),
            ("azure_storage_endpoint", self.endpoint.as_str()),
            ("azure_allow_http", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn options_toml(&self) -> String {
        let pairs: Vec<String> = self
            .options()
            .iter()
            .map(|(k, v)| format!("{k} = \"{v}\""))
            .collect();
        format!("{{ {} }}", pairs.join(", "))
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removed files and old log entries expire after two seconds.
const SHORT_RETENTION: &str = r#"properties = { "delta.deletedFileRetentionDuration" = "interval 2 seconds", "delta.logRetentionDuration" = "interval 2 seconds" }"#;

fn azure_config(azurite: &Azurite, brokers: &str, topic: &str) -> Config {
    parse_valid(&format!(
        r#"
[lake]
root = "az://lake/prod"
storage_options = {options}
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
group_id = "g-azure"
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}
[[tables]]
name = "events"
source = "k"
{EVENT_COLUMNS}
{SHORT_RETENTION}
"#,
        options = azurite.options_toml(),
    ))
}

/// Every row of the table, read by `delta_kernel` over its own Azure client.
async fn kernel_read_azure(azurite: &Azurite, url: &str) -> Vec<RecordBatch> {
    let store = object_store::azure::MicrosoftAzureBuilder::new()
        .with_account(ACCOUNT)
        .with_access_key(KEY)
        .with_container_name("lake")
        .with_endpoint(azurite.endpoint.clone())
        .with_allow_http(true)
        .build()
        .unwrap();
    crate::s3::kernel_read_store(Arc::new(store), url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_azure_table_is_exactly_once_through_a_crash_and_erasure_purges_it() {
    let azurite = Azurite::start();
    azurite.container("lake");
    let topic = "azure-events";
    let kafka = kafka(topic, 4);
    let config = azure_config(&azurite, kafka.bootstrap_servers(), topic);

    let (good, b, c) = crash_and_replace(&kafka, topic, &config).await;
    let total = good.len() as u64;
    let table_url = "az://lake/prod/events/";
    let url = url::Url::parse(table_url).unwrap();
    wait_for_rows(&url, &azurite.options(), total, Duration::from_secs(90)).await;
    b.stop().await;
    c.stop().await;
    let batches = kernel_read_azure(&azurite, table_url).await;
    assert_exactly_once(strings(&batches, "event_id"), &good);

    // Compaction commits with create-only puts on Azure too.
    let mut table = sluice::table::open(&url, &azurite.options()).await.unwrap();
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

    // Erasure: apply, then (past the two-second retentions) purge and verify.
    let now = || chrono::Utc::now().timestamp_millis();
    let ids = crate::erasure::request(&config, &["user_id=u-7"], now()).await;
    let run = sluice::erase::apply_all(&config, now(), None)
        .await
        .unwrap();
    let deleted = run.applied[0].rows_deleted;
    assert!(deleted > 0);
    let users = strings(&kernel_read_azure(&azurite, table_url).await, "user_id");
    assert_eq!(users.len() as u64, total - deleted);
    assert!(users.iter().all(|u| u != "u-7"));
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(2600)).await;
        sluice::erase::apply_all(&config, now(), None)
            .await
            .unwrap();
        let state = crate::erasure::ledger_requests(&config).await[0].state();
        if state == State::Purged {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never purged: {state:?}"
        );
    }
    let verified = sluice::erase::verify_request(&config, &ids[0], true, now())
        .await
        .unwrap();
    assert!(verified.passed, "{:?}", verified.tables);
    assert_eq!(
        crate::erasure::ledger_requests(&config).await[0].state(),
        State::Verified
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_on_azure_land_exactly_one_commit() {
    let azurite = Azurite::start();
    azurite.container("lake");
    let options = azurite.options();
    // The Data Lake form of the URL names the container and the account.
    let url = sluice::table::resolve_location(&format!(
        "abfss://lake@{ACCOUNT}.dfs.core.windows.net/race"
    ))
    .unwrap();
    crate::fencing::race_rounds(&url, &options, 3).await;
    // The preflight's create-only probe passes on Azurite.
    sluice::table::preflight(url.as_str(), &options)
        .await
        .unwrap();
}
