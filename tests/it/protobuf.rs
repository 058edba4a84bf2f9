//! Protobuf topics read with a compiled descriptor set, the message named by
//! the topic through the platform's naming convention: messages encoded by
//! Google's Protobuf runtime, `.proto` fixtures compiled by `protoc`
//! (grpcio-tools), tables read back with `delta_kernel`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use sluice::config::Config;

use crate::avro::{python, read_frames, send_all};
use crate::common::*;

/// Compiles the fixtures and encodes events `start..start+count`; the
/// descriptor set's path and the frames.
pub fn encode(dir: &Path, start: usize, count: usize) -> (PathBuf, Vec<Vec<u8>>) {
    let frames = dir.join(format!("frames-{start}"));
    let status = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/proto_events.py"))
        .arg("--out-dir")
        .arg(dir)
        .args(["--start", &start.to_string(), "--count", &count.to_string()])
        .arg("--frames")
        .arg(&frames)
        .status()
        .expect("run proto_events.py");
    assert!(status.success());
    (dir.join("rides.pb"), read_frames(&frames))
}

const CONVENTION: &str =
    r"^(?P<env>[^.]+)\.(?P<service>[^.]+)\.(?P<kind>[^.]+)\.(?P<file>[^.]+)\.(?P<message>[^.]+)$";

fn config(
    lake: &Lake,
    brokers: &str,
    topic: &str,
    descriptors: &Path,
    naming: &str,
) -> Result<Config, String> {
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
topics = ["{topic}"]
group_id = "g-proto"
format = "protobuf"
descriptor_set = "{descriptors}"
{naming}

[[tables]]
name = "rides"
source = "k"
key = "user_id"
derived = [{{ name = "date", from = "event_time", transform = "date" }}]
partition_by = ["date"]
"#,
        root = lake.root(),
        descriptors = descriptors.display()
    );
    let config = Config::parse(&text, "test").map_err(|e| e.to_string())?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topic_names_the_message_and_the_table_is_typed_from_it() {
    let lake = Lake::new();
    let topic = "prod.rides-service.events.ride.RideEvent";
    let kafka = kafka(topic, 2);
    let (descriptors, mut frames) = encode(lake.dir.path(), 0, 300);
    // Bad messages among good ones: truncated, a wire type the field does
    // not have, bytes that are not a message.
    let mut truncated = frames[3].clone();
    truncated.truncate(truncated.len() - 3);
    let wrong_wire = vec![0x0d, 1, 2, 3, 4]; // field 1 (a string) as fixed32
    frames.extend([truncated, wrong_wire, vec![0xff; 7]]);
    send_all(&kafka, topic, &frames);
    let naming = format!("topic_convention = '{CONVENTION}'");
    let config = config(
        &lake,
        kafka.bootstrap_servers(),
        topic,
        &descriptors,
        &naming,
    )
    .unwrap();
    let running = Running::start(&config);
    running
        .wait_for(Duration::from_secs(60), "rows", |s| {
            s.committed >= 300 && s.dead_lettered >= 3
        })
        .await;
    let stats = running.stop().await;
    assert_eq!(
        (stats.committed, stats.dead_lettered),
        (300, 3),
        "{stats:?}"
    );

    let table = lake.table("rides");
    let batches = kernel_read(&table).await;
    let expected: Vec<String> = (0..300).map(|n| format!("e-{n}")).collect();
    assert_exactly_once(strings(&batches, "event_id"), &expected);
    let schema = batches[0].schema();
    let ty = |name: &str| schema.field_with_name(name).unwrap().data_type().clone();
    assert!(matches!(
        ty("event_time"),
        DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some(_))
    ));
    assert_eq!(ty("city"), DataType::Utf8);
    assert_eq!(ty("tip_cents"), DataType::Int64);
    assert_eq!(ty("rating"), DataType::Int32);
    assert_eq!(ty("distance_mm"), DataType::Decimal128(20, 0));
    assert_eq!(ty("seats"), DataType::Int64);
    assert_eq!(ty("photo"), DataType::Binary);
    assert_eq!(ty("extra"), DataType::Utf8);
    assert!(matches!(ty("payment"), DataType::Struct(f) if f.len() == 2));
    assert!(matches!(ty("attributes"), DataType::Map(..)));
    assert!(matches!(ty("stops"), DataType::List(..)));

    // Values as the Protobuf runtime wrote them, by event number.
    let mut seen = 0;
    for batch in &batches {
        let ids = strings(std::slice::from_ref(batch), "event_id");
        let city = strings(std::slice::from_ref(batch), "city");
        let distance = strings(std::slice::from_ref(batch), "distance_mm");
        let extra = strings(std::slice::from_ref(batch), "extra");
        let times = batch
            .column_by_name("event_time")
            .unwrap()
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        let tips = batch
            .column_by_name("tip_cents")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>();
        let ratings = batch
            .column_by_name("rating")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int32Type>();
        let delta = batch
            .column_by_name("delta")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int32Type>();
        let pickup = batch.column_by_name("pickup").unwrap().as_struct();
        let payment = batch.column_by_name("payment").unwrap().as_struct();
        for (row, id) in ids.iter().enumerate() {
            let n: i64 = id[2..].parse().unwrap();
            assert_eq!(times.value(row), (1_714_564_800 + n) * 1_000_000 + 123_456);
            assert_eq!(
                city[row],
                ["CITY_UNSPECIFIED", "LONDON", "PARIS"][(n % 3) as usize]
            );
            assert_eq!(distance[row], (2u128.pow(63) + n as u128).to_string());
            assert_eq!(tips.is_valid(row), n % 2 == 0, "wrapper unset reads null");
            assert_eq!(
                ratings.is_valid(row),
                n % 4 != 0,
                "proto3 optional keeps presence"
            );
            assert_eq!(pickup.is_valid(row), n % 5 != 0, "an unset message is null");
            assert_eq!(delta.value(row), -(n as i32));
            assert_eq!(payment.is_valid(row), n % 3 != 2, "an unset oneof is null");
            assert!(
                extra[row].contains(&format!("\"promo\":\"p{n}\"")),
                "{}",
                extra[row]
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 300);
    let log = std::fs::read_to_string(table.join("_delta_log/00000000000000000000.json")).unwrap();
    assert!(
        log.contains("Unique id of the event."),
        "comments become column comments"
    );

    let reasons = strings(
        &kernel_read(&lake.table("rides_dead_letters")).await,
        "error",
    )
    .join("\n");
    for reason in [
        "not a valid `rides.v1.RideEvent`",
        "truncated",
        "wire type 5, expected 2",
    ] {
        assert!(reasons.contains(reason), "{reason} in {reasons}");
    }
    register_for_spark_with(
        &table,
        "protobuf_rides",
        300,
        serde_json::json!({
            "types": {
                "event_time": "timestamp",
                "distance_mm": "decimal(20,0)",
                "seats": "bigint",
                "tip_cents": "bigint",
                "city": "string",
                "extra": "string",
                "photo": "binary",
                "payment": "struct<card:struct<token:string>,account:bigint>",
                "attributes": "map<string,bigint>",
                "stops": "array<int>",
            },
            "comments": {
                "event_id": "Unique id of the event.",
                "user_id": "The rider.",
                "pickup.lat": "Latitude in degrees.",
            },
        }),
    );
}

#[test]
fn topics_that_name_no_single_message_are_refused_at_start() {
    let lake = Lake::new();
    let (descriptors, _) = encode(lake.dir.path(), 0, 0);
    let refused = |topic: &str, naming: &str| {
        config(&lake, "127.0.0.1:9", topic, &descriptors, naming).unwrap_err()
    };
    let convention = format!("topic_convention = '{CONVENTION}'");
    let no_match = refused("rides", &convention);
    assert!(
        no_match.contains("does not match the naming convention"),
        "{no_match}"
    );
    let unknown = refused("prod.rides.events.ride.Lift", &convention);
    assert!(
        unknown.contains("`Lift`") && unknown.contains("does not hold"),
        "{unknown}"
    );
    let loose = r"topic_convention = '^(?P<env>[^.]+)\.(?P<message>[^.]+)$'";
    let ambiguous = refused("prod.Audit", loose);
    assert!(
        ambiguous.contains("ambiguous") && ambiguous.contains("identity.v1.Audit"),
        "{ambiguous}"
    );
    let recursive = refused("t", "message = \"rides.v1.Node\"");
    assert!(
        recursive.contains("recursive") && recursive.contains("children"),
        "{recursive}"
    );
    let neither = refused("t", "");
    assert!(
        neither.contains("`message` or `topic_convention`"),
        "{neither}"
    );
    // With the file group the same name resolves.
    let by_file = config(
        &lake,
        "127.0.0.1:9",
        "prod.ids.audit.audit.Audit",
        &descriptors,
        &convention,
    );
    assert!(by_file.is_ok(), "{by_file:?}");
}
