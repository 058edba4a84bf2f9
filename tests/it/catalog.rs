//! `sluice catalog`: a lake with a configured table (fed with bad records
//! too, compacted, Z-ordered, vacuumed, checkpointed, under an erasure
//! request), its dead-letter table, the erasure ledger, a table another
//! engine wrote and a damaged one; read back as JSON through the command
//! line, and as HTML checked in a real headless browser (Chromium).

use std::path::Path;
use std::process::Command;

use crate::avro::python;
use crate::common::*;

fn sluice(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sluice {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Chromium's DOM of `page` after loading it.
fn browser_dom(page: &Path) -> String {
    let browser = std::env::var("SLUICE_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let out = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            &format!("file://{}", page.display()),
        ])
        .output()
        .unwrap_or_else(|e| panic!("`{browser}` (scripts/test installs Debian's chromium): {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_describes_every_table_of_the_lake() {
    let lake = Lake::new();
    let input = lake.table("in");
    std::fs::create_dir_all(&input).unwrap();
    let mut lines: String = (0..300)
        .map(|n| {
            format!(
                "{{\"event_id\":\"e-{n}\",\"user_id\":\"u-{}\",\"amount\":{n}.5,\"event_time\":\"2024-05-0{}T12:00:00Z\"}}\n",
                n % 30,
                1 + n % 3
            )
        })
        .collect();
    lines.push_str("not json\n{\"event_id\": 7}\n");
    std::fs::write(input.join("a.ndjson"), lines).unwrap();
    let text = format!(
        r#"
[lake]
root = "{root}"
[batching]
max_rows = 30
[erasure]
enabled = false
[[sources]]
kind = "file"
name = "files"
path = "{input}"
[[tables]]
name = "events"
source = "files"
description = "Payments <b>booked</b> & settled"
owner = "payments-team"
tags = ["finance"]
zorder_by = ["user_id"]
{EVENT_COLUMNS}
"#,
        root = lake.root(),
        input = input.display()
    );
    let config_path = lake.dir.path().join("sluice.toml");
    std::fs::write(&config_path, &text).unwrap();
    let config = parse_valid(&text);
    let stats = ingest_to_end(&config).await;
    assert_eq!(
        (stats.committed, stats.dead_lettered),
        (300, 2),
        "{stats:?}"
    );

    let events = lake.table("events");
    let events_arg = events.to_str().unwrap();
    sluice(&["-q", "compact", events_arg]);
    sluice(&["-q", "zorder", "--by", "user_id", events_arg]);
    sluice(&["-q", "vacuum", "--retention", "0s", "--force", events_arg]);
    let config_arg = config_path.to_str().unwrap();
    sluice(&[
        "-q",
        "forget",
        "-c",
        config_arg,
        "request",
        "--key",
        "user_id=u-3",
        "--reason",
        "test",
        "--all",
    ]);

    // A table another engine wrote, and a damaged one.
    let foreign = lake.table("foreign_orders");
    let status = Command::new(python())
        .args([
            "-c",
            "import sys, pyarrow as pa\nfrom deltalake import write_deltalake\nwrite_deltalake(sys.argv[1], pa.table({'order_id': [1, 2]}))",
            foreign.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let damaged = lake.table("damaged");
    std::fs::create_dir_all(damaged.join("_delta_log")).unwrap();
    std::fs::write(
        damaged.join("_delta_log/00000000000000000000.json"),
        "{not json",
    )
    .unwrap();

    let catalog: serde_json::Value = serde_json::from_str(&sluice(&[
        "-q", "catalog", "--config", config_arg, "--json",
    ]))
    .unwrap();
    let table = |name: &str| -> &serde_json::Value {
        catalog["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {catalog:#}"))
    };
    let names: Vec<&str> = catalog["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "_sluice_erasure",
            "events",
            "events_dead_letters",
            "foreign_orders"
        ]
    );
    assert_eq!(catalog["unreadable"][0]["name"], "damaged");

    let t = table("events");
    assert_eq!(
        (t["kind"].as_str(), t["configured"].as_bool()),
        (Some("data"), Some(true))
    );
    let d = &t["descriptive"];
    assert_eq!(d["description"], "Payments <b>booked</b> & settled");
    assert_eq!(d["owner"], "payments-team");
    assert_eq!(d["tags"], serde_json::json!(["finance"]));
    assert_eq!(d["schema_source"], "columns declared in the config");
    let event_id = &d["columns"][0];
    assert_eq!(
        (
            &event_id["name"],
            &event_id["data_type"],
            &event_id["nullable"]
        ),
        (&"event_id".into(), &"string".into(), &false.into())
    );
    let s = &t["structural"];
    assert_eq!(s["key"], "user_id");
    assert_eq!(s["zorder_columns"], serde_json::json!(["user_id"]));
    assert_eq!(s["zordered_share"], 1.0, "every byte was Z-ordered");
    assert_eq!(s["related"], serde_json::json!(["events_dead_letters"]));
    assert_eq!(
        s["sources"],
        serde_json::json!([format!("file:{}", input.display())])
    );
    let a = &t["administrative"];
    assert_eq!(a["rows"], 300);
    assert_eq!(a["event_time_column"], "event_time");
    assert_eq!(a["first_event"], "2024-05-01T12:00:00Z");
    assert_eq!(a["last_event"], "2024-05-03T12:00:00Z");
    assert!(a["freshness_seconds"].as_i64().unwrap() > 86_400 * 100);
    let version = a["version"].as_i64().unwrap();
    assert!(version >= 11, "{a}");
    assert_eq!(
        a["commits_last_24h"],
        version + 1,
        "every commit is from today"
    );
    assert_eq!(a["complete"], true);
    assert_eq!(a["dead_lettered"], 2);
    assert!(
        a["last_compaction"].is_string() && a["last_zorder"].is_string(),
        "{a}"
    );
    assert!(a["last_vacuum"].is_string(), "{a}");
    let checkpoint: serde_json::Value =
        serde_json::from_slice(&std::fs::read(events.join("_delta_log/_last_checkpoint")).unwrap())
            .unwrap();
    assert_eq!(a["last_checkpoint"], checkpoint["version"], "{a}");
    let erasure = &a["open_erasures"][0];
    assert_eq!(erasure["state"], "requested", "{a}");
    assert_eq!(erasure["overdue"], false);

    let dead = table("events_dead_letters");
    assert_eq!(dead["kind"], "dead_letters");
    assert_eq!(dead["structural"]["dead_letters_of"], "events");
    assert_eq!(table("_sluice_erasure")["kind"], "erasure_ledger");
    let foreign_entry = table("foreign_orders");
    assert_eq!(
        (
            foreign_entry["kind"].as_str(),
            foreign_entry["configured"].as_bool()
        ),
        (Some("data"), Some(false))
    );
    assert_eq!(foreign_entry["administrative"]["rows"], 2);

    // The text form says the same in a block per table.
    let text = sluice(&["-q", "catalog", "--config", config_arg]);
    assert!(
        text.contains("Z-ordered by user_id (100% of bytes ordered); key user_id"),
        "{text}"
    );
    assert!(text.contains("damaged  UNREADABLE"), "{text}");

    // The page, as a browser builds it: one section per table, the
    // overview links to each, and the description stays text.
    let page = lake.dir.path().join("catalog.html");
    sluice(&[
        "-q",
        "catalog",
        "--config",
        config_arg,
        "--html",
        page.to_str().unwrap(),
    ]);
    let dom = browser_dom(&page);
    for name in [
        "_sluice_erasure",
        "events",
        "events_dead_letters",
        "foreign_orders",
    ] {
        assert!(
            dom.contains(&format!("<section id=\"t-{name}\">")),
            "{name} in {dom}"
        );
        assert!(
            dom.contains(&format!("<a href=\"#t-{name}\">{name}</a>")),
            "{name} linked"
        );
    }
    assert_eq!(dom.matches("<section").count(), 4);
    assert!(
        dom.contains(
            "<p class=\"description\">Payments &lt;b&gt;booked&lt;/b&gt; &amp; settled</p>"
        ),
        "the description is text, not markup: {dom}"
    );
    assert!(!dom.contains("<b>booked</b>"));
    assert!(dom.contains("damaged"), "unreadable tables are listed");
}
