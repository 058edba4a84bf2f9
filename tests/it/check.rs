//! `sluice check`: tables written by another writer (delta-rs's Python
//! `deltalake` and pyarrow, `scripts/foreign_tables.py`) each get the
//! findings their defect calls for, with a failing exit status; a table
//! sluice writes passes for every reader with nothing to report.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use sluice::check::{check, Severity, Target};

use crate::avro::python;
use crate::common::*;

const ALL: [Target; 2] = [Target::Bigquery, Target::Spark];

async fn codes(table: &std::path::Path) -> (BTreeSet<String>, sluice::check::Report) {
    let url = sluice::table::resolve_existing(table.to_str().unwrap()).unwrap();
    let opened = sluice::table::open(&url, &no_options()).await.unwrap();
    let report = check(&opened, &ALL, 1000).await.unwrap();
    let codes = report.findings.iter().map(|f| f.code.to_string()).collect();
    (codes, report)
}

/// Writes `scripts/foreign_tables.py`'s tables under `dir`; returns each
/// table's name with the finding codes its defect calls for.
pub(crate) fn foreign_tables(dir: &std::path::Path) -> BTreeMap<String, Vec<String>> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/foreign_tables.py");
    let output = Command::new(python())
        .arg(script)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_tables_get_a_finding_for_each_defect() {
    let dir = tempfile::tempdir().unwrap();
    let expected = foreign_tables(dir.path());
    assert_eq!(expected.len(), 9);
    for (name, wanted) in &expected {
        let (found, report) = codes(&dir.path().join(name)).await;
        for code in wanted {
            assert!(
                found.contains(code),
                "{name}: no `{code}` in {:#?}",
                report.findings
            );
        }
        if wanted.is_empty() {
            assert!(report.findings.is_empty(), "{name}: {:#?}", report.findings);
        }
    }

    // Column mapping lets Spark take any name; BigQuery still wants plain ones.
    let (_, mapped) = codes(&dir.path().join("mapped")).await;
    assert!(
        mapped.findings.iter().all(|f| f.target == Target::Bigquery),
        "{:#?}",
        mapped.findings
    );
    // Reader features are judged per reader: Spark reads timestampNtz.
    let (_, ntz) = codes(&dir.path().join("ntz")).await;
    assert!(
        !ntz.findings
            .iter()
            .any(|f| f.target == Target::Spark && f.code == "reader-feature"),
        "{:#?}",
        ntz.findings
    );
    let (_, files) = codes(&dir.path().join("files")).await;
    let nanos = files
        .findings
        .iter()
        .find(|f| f.code == "nanosecond-timestamp")
        .unwrap();
    assert!(
        nanos.message.contains("part-foreign.parquet") && nanos.message.contains("at"),
        "{nanos:?}"
    );
    assert_eq!(nanos.severity, Severity::Error);

    // The command: findings and exit status 1 when a reader would fail, 0 when not.
    let run = |table: &str, readers: &str| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["-q", "check", "--for", readers])
            .arg(dir.path().join(table))
            .output()
            .unwrap()
    };
    let failed = run("ntz", "bigquery");
    assert_eq!(failed.status.code(), Some(1));
    let text = String::from_utf8_lossy(&failed.stdout);
    assert!(
        text.contains("bigquery error") && text.contains("timestamp-ntz"),
        "{text}"
    );
    assert!(text.contains("bigquery: cannot read the table"), "{text}");
    let spark = run("ntz", "spark");
    assert_eq!(
        spark.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&spark.stdout)
    );
    let plain = run("plain", "all");
    assert_eq!(plain.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&plain.stdout).contains("spark: can read the table"));

    // The maintenance loop counts rounds over a table BigQuery cannot read;
    // its first round writes a checkpoint, which cures a long log.
    let failing = |table: &str| {
        let gauges = sluice::telemetry::metrics::Gauges {
            buffered_bytes: 0,
            budget_bytes: 0,
            ready: true,
            now_ms: 0,
        };
        let text = sluice::telemetry::metrics::render(
            &sluice::telemetry::stats::IngestStats::new(),
            &gauges,
        );
        crate::serve::value(
            &crate::serve::parse_prometheus(&text),
            &format!("sluice_bigquery_check_failures_total{{table=\"{table}\"}}"),
        )
    };
    for (name, rounds) in [("long_log", Some(1.0)), ("ntz", Some(2.0)), ("plain", None)] {
        let url = sluice::table::resolve_existing(dir.path().join(name).to_str().unwrap()).unwrap();
        let mut maintenance = sluice::maintain::scheduler::MaintenanceLoop::new(
            name,
            url,
            no_options(),
            Default::default(),
            Vec::new(),
            "check-test",
        )
        .await
        .unwrap();
        maintenance.round().await.unwrap();
        maintenance.round().await.unwrap();
        assert_eq!(failing(name), rounds, "{name}");
    }
    let (cured, _) = codes(&dir.path().join("long_log")).await;
    assert!(!cured.contains("log-size"), "{cured:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_sluice_writes_passes_for_every_reader() {
    let lake = Lake::new();
    let input = lake.table("in");
    std::fs::create_dir_all(&input).unwrap();
    let lines: String = (0..3000)
        .map(|n| {
            format!(
                "{{\"event_id\":\"e-{n}\",\"user_id\":\"u-{}\",\"amount\":{n}.5,\"event_time\":\"2024-05-01T12:00:00Z\"}}\n",
                n % 40
            )
        })
        .collect();
    std::fs::write(input.join("a.ndjson"), lines).unwrap();
    // Small batches: enough commits for a checkpoint.
    let config = file_config(&lake, &input, "events", "max_rows = 200", EVENT_COLUMNS);
    ingest_to_end(&config).await;
    let (_, report) = codes(&lake.table("events")).await;
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert!(report.footers_read > 10, "{report:?}");
    assert!(!report.fails());
}
