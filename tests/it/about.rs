//! What a table says about itself: description, owner, tags, sources, schema
//! source, key and Z-order columns in its Delta metadata, read back by
//! another engine's reader (the `deltalake` Python package), set when the
//! table is created and brought up to date when the config changes.

use std::path::Path;
use std::process::Command;

use crate::avro::python;
use crate::common::*;

/// The table's description and `sluice.*`/`delta.*` properties, as the
/// `deltalake` package reads them.
fn metadata(table: &Path) -> serde_json::Value {
    let script = r#"
import json, sys
from deltalake import DeltaTable
meta = DeltaTable(sys.argv[1]).metadata()
print(json.dumps({"description": meta.description, "configuration": meta.configuration}))
"#;
    let out = Command::new(python())
        .args(["-c", script, table.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn config(lake: &Lake, input: &Path, about: &str) -> sluice::config::Config {
    let table = format!("{EVENT_COLUMNS}\nzorder_by = [\"user_id\"]\n{about}");
    file_config(lake, input, "events", "", &table)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_carry_their_description_owner_and_sources() {
    let lake = Lake::new();
    let input = lake.table("in");
    std::fs::create_dir_all(&input).unwrap();
    let line = |n: usize| {
        format!("{{\"event_id\":\"e-{n}\",\"user_id\":\"u-{n}\",\"amount\":1.5,\"event_time\":\"2024-05-01T12:00:00Z\"}}\n")
    };
    std::fs::write(
        input.join("a.ndjson"),
        (0..50).map(line).collect::<String>(),
    )
    .unwrap();
    let first = config(
        &lake,
        &input,
        "description = \"Payments as the ledger service books them\"\nowner = \"payments-team\"\ntags = [\"finance\", \"pii\"]",
    );
    ingest_to_end(&first).await;
    let got = metadata(&lake.table("events"));
    assert_eq!(
        got["description"],
        "Payments as the ledger service books them"
    );
    let conf = &got["configuration"];
    assert_eq!(conf["sluice.owner"], "payments-team");
    assert_eq!(conf["sluice.tags"], "finance,pii");
    assert_eq!(conf["sluice.key"], "user_id");
    assert_eq!(conf["sluice.zorder"], "user_id");
    assert_eq!(conf["sluice.kind"], "data");
    assert_eq!(conf["sluice.schema"], "columns declared in the config");
    assert_eq!(
        conf["sluice.sources"],
        format!("file:{}", input.display()).as_str()
    );
    assert_eq!(
        conf["delta.checkpointInterval"], "10",
        "sluice's defaults stay"
    );

    let dead = metadata(&lake.table("events_dead_letters"));
    assert_eq!(dead["configuration"]["sluice.kind"], "dead_letters");
    assert_eq!(dead["configuration"]["sluice.table"], "events");
    assert!(dead["description"].as_str().unwrap().contains("`events`"));

    // The config changes: the next run brings the table up to date.
    std::fs::write(
        input.join("b.ndjson"),
        (50..60).map(line).collect::<String>(),
    )
    .unwrap();
    let second = config(
        &lake,
        &input,
        "description = \"Payments, booked\"\nowner = \"ledger-team\"",
    );
    let stats = ingest_to_end(&second).await;
    assert_eq!(stats.committed, 10, "{stats:?}");
    let got = metadata(&lake.table("events"));
    assert_eq!(got["description"], "Payments, booked");
    assert_eq!(got["configuration"]["sluice.owner"], "ledger-team");
    let expected: Vec<String> = (0..60).map(|n| format!("e-{n}")).collect();
    assert_exactly_once(
        strings(&kernel_read(&lake.table("events")).await, "event_id"),
        &expected,
    );
}
