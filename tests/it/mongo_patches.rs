//! MongoDB partial updates: change events whose `after` is null and whose
//! change is an oplog `patch` (`$set`/`$unset`, oplog v2 `diff`) or a
//! change stream's `updateDescription`, encoded by pymongo's `bson.json_util`
//! (`scripts/mongo_patch_events.py`): random inserts, whole-document
//! updates, partial updates and deletes over 300 documents, with
//! connector-restart replays. A mirror table must end equal to the
//! collection (each partial update applied to the row held in the table or
//! to an insert earlier in the batch); the log table holds every event
//! once with `cdc_patched` naming the columns of each partial one; a
//! change inside a declared field and the truncation of one are dead
//! letters with their reasons; a partial update of a document never inserted changes
//! nothing and is counted (`sluice status`).

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use sluice::demo::broker::{self, EmbeddedKafka};

use crate::avro::{python, script};
use crate::common::*;
use crate::mirror::assert_same_state;

const TOPIC: &str = "shop.shop.people";

/// A document as the mirror holds it: name, visits, since (ms).
type Doc = (Option<String>, Option<i64>, Option<i64>);

struct Generated {
    events: Vec<(String, String)>,
    expected: BTreeMap<String, Doc>,
    mutations: u64,
    partial: usize,
}

fn generate(lake: &Lake) -> Generated {
    let out = lake.dir.path().join("mongo");
    std::fs::create_dir_all(&out).unwrap();
    let status = std::process::Command::new(python())
        .arg(script("mongo_patch_events.py"))
        .arg(&out)
        .args(["300", "3000", "11"])
        .status()
        .unwrap();
    assert!(status.success(), "the generator failed");
    let events = std::fs::read_to_string(out.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                v["key"].as_str().unwrap().to_string(),
                v["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("expected.json")).unwrap()).unwrap();
    let rows = expected["rows"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, d)| {
            let doc = (
                d["name"].as_str().map(str::to_string),
                d["visits"].as_i64(),
                d["since_ms"].as_i64(),
            );
            (id.clone(), doc)
        })
        .collect();
    Generated {
        events,
        expected: rows,
        mutations: expected["mutations"].as_u64().unwrap(),
        partial: expected["partial"].as_u64().unwrap() as usize,
    }
}

/// A mirror table and a log table on the topic; with `registry`, the
/// events are read through it (Kafka Connect's Avro converter).
fn config(lake: &Lake, kafka: &EmbeddedKafka, registry: Option<&str>) -> sluice::config::Config {
    let registry = registry
        .map(|url| format!("registry = {{ url = \"{url}\" }}\n"))
        .unwrap_or_default();
    let source = |name: &str| {
        format!(
            "[[sources]]\nkind = \"kafka\"\nname = \"{name}\"\nbrokers = \"{}\"\ntopics = [\"{TOPIC}\"]\ngroup_id = \"g-{name}\"\nformat = \"debezium\"\n{registry}",
            kafka.bootstrap_servers()
        )
    };
    let columns = r#"columns = [
  { name = "id", field = "_id", type = "string", nullable = false },
  { name = "name", type = "string" },
  { name = "visits", type = "long" },
  { name = "since", type = "timestamp", epoch_unit = "millis" },
]"#;
    parse_valid(&format!(
        r#"
[lake]
root = "{root}"
[batching]
max_latency = "300ms"
[maintenance]
enabled = false
[erasure]
enabled = false
{mirror}{log}
[[tables]]
name = "people"
source = "mirror"
key = "id"
mode = "mirror"
primary_key = ["id"]
{columns}
[[tables]]
name = "people_log"
source = "log"
key = "id"
{columns}
"#,
        root = lake.root(),
        mirror = source("mirror"),
        log = source("log"),
    ))
}

/// The mirror's documents by id, checking there is one row per id.
async fn mirror_docs(lake: &Lake) -> BTreeMap<String, Doc> {
    let mut docs = BTreeMap::new();
    for batch in kernel_read(&lake.table("people")).await {
        let ids = batch.column_by_name("id").unwrap().as_string::<i32>();
        let names = batch.column_by_name("name").unwrap().as_string::<i32>();
        let visits = batch
            .column_by_name("visits")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>();
        let since = batch
            .column_by_name("since")
            .unwrap()
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        for row in 0..batch.num_rows() {
            let doc = (
                names.is_valid(row).then(|| names.value(row).to_string()),
                visits.is_valid(row).then(|| visits.value(row)),
                since.is_valid(row).then(|| since.value(row) / 1000),
            );
            let id = ids.value(row).to_string();
            assert!(docs.insert(id.clone(), doc).is_none(), "{id} has two rows");
        }
    }
    docs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_updates_apply_to_the_mirror_and_are_logged_with_their_columns() {
    test_log();
    let lake = Lake::new();
    let generated = generate(&lake);
    let kafka = kafka(TOPIC, 2);
    let frames: Vec<(Vec<u8>, Vec<u8>)> = generated
        .events
        .iter()
        .map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes()))
        .collect();
    let config = config(&lake, &kafka, None);
    ingest_and_check(
        &lake,
        &kafka,
        &config,
        &generated,
        &frames,
        Some("mirror_mongo_people"),
    )
    .await;
}

/// The same events through Kafka Connect's Avro converter: keys and
/// envelopes encoded by confluent-kafka's AvroSerializer with the schemas
/// Debezium's MongoDB connector registers (`scripts/mongo_registry_events.py`),
/// `after` and `patch` still extended-JSON text inside the envelope. A
/// change-stream update names its document only in the record key, which
/// is decoded through the `<topic>-key` subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_events_through_the_avro_converter_apply_the_same() {
    test_log();
    let lake = Lake::new();
    let generated = generate(&lake);
    let registry = crate::avro::Registry::start(lake.dir.path());
    let out = lake.dir.path().join("mongo-frames");
    let status = std::process::Command::new(python())
        .arg(script("mongo_registry_events.py"))
        .args(["--registry", &registry.url, "--topic", TOPIC, "--events"])
        .arg(lake.dir.path().join("mongo").join("events.jsonl"))
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "the encoder failed");
    let frames: Vec<(Vec<u8>, Vec<u8>)> = crate::avro::read_frames(&out)
        .chunks(2)
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect();
    assert_eq!(frames.len(), generated.events.len());
    assert!(
        frames.iter().all(|(k, _)| k.first() == Some(&0)),
        "keys are registry-framed"
    );
    let kafka = kafka(TOPIC, 2);
    let config = config(&lake, &kafka, Some(&registry.url));
    ingest_and_check(&lake, &kafka, &config, &generated, &frames, None).await;
}

/// Sends `frames` in parts and checks the tables against `generated`.
async fn ingest_and_check(
    lake: &Lake,
    kafka: &EmbeddedKafka,
    config: &sluice::config::Config,
    generated: &Generated,
    frames: &[(Vec<u8>, Vec<u8>)],
    spark: Option<&str>,
) {
    let running = Running::start(config);
    // In parts, so partial updates meet rows committed by earlier merges
    // as well as inserts in their own batch.
    let producer = kafka.producer().unwrap();
    let parts = frames.chunks(frames.len() / 6 + 1);
    let mut sent = 0u64;
    for part in parts {
        for (key, value) in part {
            broker::send(&producer, TOPIC, key.as_slice(), value).unwrap();
        }
        broker::flush(&producer).unwrap();
        sent += part.iter().filter(|(_, v)| !v.is_empty()).count() as u64;
        running
            .wait_for(Duration::from_secs(60), "a part", |s| {
                s.committed + s.dead_lettered >= 2 * sent
            })
            .await;
    }
    assert_eq!(sent, generated.mutations);
    let stats = running.stop().await;
    assert_eq!(stats.dead_lettered, 4, "two bad events, in each table");

    let docs = mirror_docs(lake).await;
    assert_same_state(&docs, &generated.expected);

    if let Some(name) = spark {
        register_for_spark(&lake.table("people"), name, docs.len());
    }

    // The merges' counts add up to the rows the mirror holds, partial
    // updates folded onto held rows included.
    let url = url::Url::from_directory_path(lake.table("people")).unwrap();
    let status = sluice::status::table_status(&url, &no_options(), 1 << 20)
        .await
        .unwrap();
    let merges = status.merges.clone().expect("a mirror's status has merges");
    assert_eq!(
        merges.sums.upserted - merges.sums.removed,
        docs.len() as u64,
        "{merges:?}"
    );
    assert!(merges.sums.unmatched >= 1, "the stray patch: {merges:?}");
    let rendered = sluice::cli::status::render(&status);
    assert_eq!(
        rendered.contains(&format!(
            ", {} partial updates without a row;",
            merges.sums.unmatched
        )),
        merges.sums.unmatched > 0,
        "{rendered}"
    );

    // The log: every event once, the partial ones naming their columns.
    let log = kernel_read(&lake.table("people_log")).await;
    let rows: usize = log.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows as u64, generated.mutations - 2);
    let patched: Vec<String> = log
        .iter()
        .flat_map(|b| {
            let column = b.column_by_name("cdc_patched").unwrap().as_string::<i32>();
            column
                .iter()
                .flatten()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(patched.len(), generated.partial);
    let columns = ["name", "visits", "since"];
    assert!(patched
        .iter()
        .all(|p| p.split(',').all(|c| columns.contains(&c))));
    assert!(
        patched.iter().any(|p| p.contains(',')),
        "some set two columns"
    );

    for table in ["people_dead_letters", "people_log_dead_letters"] {
        let dead = strings(&kernel_read(&lake.table(table)).await, "error");
        assert_eq!(dead.len(), 2, "{table}: {dead:?}");
        assert!(
            dead.iter()
                .any(|e| e.contains("`name.first`, inside the column `name`")),
            "{dead:?}"
        );
        assert!(
            dead.iter()
                .any(|e| e.contains("truncates the array `name`")),
            "{dead:?}"
        );
    }
}
