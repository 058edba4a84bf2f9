//! Protobuf in the schema registry's wire format: messages framed by
//! confluent-kafka's `ProtobufSerializer` against the registry stand-in,
//! the table typed from the subject's latest schema (the message named by
//! the topic), grown by an additive version in the commit of its first rows,
//! a type change refused, the registry's absence waited out; read back with
//! `delta_kernel`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use sluice::config::Config;

use crate::avro::{python, read_frames, send_all, Registry};
use crate::common::*;

const TOPIC: &str = "prod.rides-service.events.ride.RideEvent";
const CONVENTION: &str =
    r"^(?P<env>[^.]+)\.(?P<service>[^.]+)\.(?P<kind>[^.]+)\.(?P<file>[^.]+)\.(?P<message>[^.]+)$";

/// Events `start..start+count` of schema `version`, framed by the serializer.
fn encode(registry: &str, dir: &Path, version: &str, start: usize, count: usize) -> Vec<Vec<u8>> {
    let frames = dir.join(format!("frames-{version}-{start}"));
    let status = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/proto_events.py"))
        .arg("--out-dir")
        .arg(dir.join("proto"))
        .args([
            "--registry",
            registry,
            "--topic",
            TOPIC,
            "--version",
            version,
        ])
        .args(["--start", &start.to_string(), "--count", &count.to_string()])
        .arg("--frames")
        .arg(&frames)
        .status()
        .expect("run proto_events.py");
    assert!(status.success(), "proto_events.py {version} failed");
    read_frames(&frames)
}

fn config(lake: &Lake, brokers: &str, registry: &str, naming: &str) -> Result<Config, String> {
    let text = format!(
        r#"
[lake]
root = "{root}"

[batching]
max_latency = "700ms"

[erasure]
enabled = false

[[sources]]
kind = "kafka"
name = "k"
brokers = "{brokers}"
topics = ["{TOPIC}"]
group_id = "g-proto-registry"
format = "protobuf"
registry = {{ url = "{registry}" }}
{naming}

[[tables]]
name = "rides"
source = "k"
key = "user_id"
derived = [{{ name = "date", from = "event_time", transform = "date" }}]
partition_by = ["date"]
"#,
        root = lake.root(),
    );
    let config = Config::parse(&text, "test").map_err(|e| e.to_string())?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_framed_protobuf_follows_its_schema_versions() {
    let lake = Lake::new();
    let registry = Registry::start(lake.dir.path());
    let kafka = kafka(TOPIC, 2);
    let v1 = encode(&registry.url, lake.dir.path(), "v1", 0, 300);
    // RideEvent is the file's third message: the serializer frames it with
    // the index list [2] (count 1, then 2, zigzag), not the lone 0 of [0].
    assert_eq!(
        v1[0][5..7],
        [2, 4],
        "message indexes as the serializer writes them"
    );

    // Bad messages among good ones: a truncated body, another magic byte,
    // an id the registry does not know, indexes naming no message, too short.
    let mut frames = v1.clone();
    let mut truncated = v1[3].clone();
    truncated.truncate(truncated.len() - 3);
    let mut magic = v1[4].clone();
    magic[0] = 9;
    let mut unknown = v1[5].clone();
    unknown[1..5].copy_from_slice(&4242u32.to_be_bytes());
    let mut no_message = v1[6].clone();
    no_message[6] = 14; // [7]
    frames.extend([truncated, magic, unknown, no_message, vec![0, 0, 0]]);
    send_all(&kafka, TOPIC, &frames);

    // Without the convention the file's first message (`Point`) would type
    // the table, which has no key column: refused at start.
    let config_first = config(&lake, kafka.bootstrap_servers(), &registry.url, "").unwrap();
    let refused = sluice::ingest::run(
        &config_first,
        tokio_util::sync::CancellationToken::new(),
        std::sync::Arc::new(sluice::telemetry::stats::IngestStats::new()),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains("`rides.v1.Point` (the file's first message")
            && refused.contains("no column `event_time`"),
        "{refused}"
    );

    let naming = format!("topic_convention = '{CONVENTION}'");
    let config = config(&lake, kafka.bootstrap_servers(), &registry.url, &naming).unwrap();
    let running = Running::start(&config);
    running
        .wait_for(Duration::from_secs(60), "v1 rows", |s| {
            s.committed >= 300 && s.dead_lettered >= 5
        })
        .await;

    // v2 adds `promo_code` and `pickup.zone`.
    let v2 = encode(&registry.url, lake.dir.path(), "v2", 300, 100);
    send_all(&kafka, TOPIC, &v2);
    running
        .wait_for(Duration::from_secs(60), "v2 rows", |s| s.committed >= 400)
        .await;

    // v3 makes `seats` a string, and its id is new: first the registry is
    // away (consumption waits, nothing is dead-lettered), then it refuses v3.
    let v3 = encode(&registry.url, lake.dir.path(), "v3", 400, 50);
    registry.pause(true);
    send_all(&kafka, TOPIC, &v3);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let paused = running.stats.snapshot();
    assert_eq!(
        (paused.committed, paused.dead_lettered),
        (400, 5),
        "{paused:?}"
    );
    registry.pause(false);
    running
        .wait_for(Duration::from_secs(60), "v3 dead letters", |s| {
            s.dead_lettered >= 55
        })
        .await;
    let stats = running.stop().await;
    assert_eq!(
        (stats.committed, stats.dead_lettered),
        (400, 55),
        "{stats:?}"
    );

    let table = lake.table("rides");
    let batches = kernel_read(&table).await;
    let expected: Vec<String> = (0..400).map(|n| format!("e-{n}")).collect();
    assert_exactly_once(strings(&batches, "event_id"), &expected);
    let schema = batches[0].schema();
    assert_eq!(
        schema.field_with_name("seats").unwrap().data_type(),
        &DataType::Int64,
        "v3's type change left the table alone"
    );
    // v1 rows read null in v2's columns; v2 rows carry them.
    let mut checked = 0;
    for batch in &batches {
        let ids = strings(std::slice::from_ref(batch), "event_id");
        let promo = batch.column_by_name("promo_code").unwrap();
        let pickup = batch.column_by_name("pickup").unwrap().as_struct();
        let zone = pickup.column_by_name("zone").unwrap().as_string::<i32>();
        for (row, id) in ids.iter().enumerate() {
            let n: usize = id[2..].parse().unwrap();
            if n < 300 {
                assert!(promo.is_null(row), "{id}");
                assert!(zone.is_null(row), "{id}");
            } else {
                assert_eq!(promo.as_string::<i32>().value(row), format!("promo-{n}"));
                if !n.is_multiple_of(5) {
                    assert_eq!(zone.value(row), format!("z{}", n % 3), "{id}");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 400);
    // One commit grew the schema: the one that carried the first v2 rows.
    let commits = commits_with_operation(&table, "STREAMING UPDATE");
    let evolving: Vec<_> = commits
        .iter()
        .filter(|c| c.iter().any(|a| a.get("metaData").is_some()))
        .collect();
    assert_eq!(evolving.len(), 1, "one commit grows the schema");
    assert!(evolving[0].iter().any(|a| a.get("add").is_some()));

    let reasons = strings(
        &kernel_read(&lake.table("rides_dead_letters")).await,
        "error",
    )
    .join("\n");
    for reason in [
        "not a valid `rides.v1.RideEvent`",
        "magic byte",
        "unknown schema id 4242",
        "message indexes [7]",
        "shorter than",
        "field `seats`: Int64 in the table, Utf8 in the schema",
    ] {
        assert!(reasons.contains(reason), "{reason} in {reasons}");
    }
    assert_status_names_schemas(&table, &format!("{TOPIC}-value")).await;
    register_for_spark_with(
        &table,
        "protobuf_registry_rides",
        400,
        serde_json::json!({"types": {
            "promo_code": "string",
            "pickup": "struct<lat:double,lon:double,zone:string>",
            "seats": "bigint",
        }}),
    );
}
