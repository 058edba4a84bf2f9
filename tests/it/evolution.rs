//! JSON tables and fields they do not declare: counted per name (status,
//! metrics), or, with `evolve = "add_columns"`, added as nullable columns in
//! the commit of the first rows that carry them.

use std::io::Write;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;

use crate::common::*;

fn lines(lake: &Lake, name: &str, from: usize, to: usize, extra: impl Fn(usize) -> String) {
    let dir = lake.table("in");
    std::fs::create_dir_all(&dir).unwrap();
    let mut out = std::fs::File::create(dir.join(name)).unwrap();
    for n in from..to {
        writeln!(
            out,
            r#"{{"event_id":"e-{n}","user_id":"u-{}","amount":{n}.5,"event_time":"2024-05-01T12:00:00Z"{}}}"#,
            n % 13,
            extra(n)
        )
        .unwrap();
    }
}

fn table_config(lake: &Lake, evolve: &str) -> sluice::config::Config {
    let table = format!("{EVENT_COLUMNS}\n{evolve}");
    let mut config = file_config(lake, &lake.table("in"), "events", "max_rows = 100", &table);
    config.erasure.enabled = false;
    config
}

async fn status(lake: &Lake) -> sluice::status::TableStatus {
    let url = url::Url::from_directory_path(lake.table("events")).unwrap();
    sluice::status::table_status(&url, &no_options(), 1 << 20)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_a_table_does_not_declare_are_counted_not_dropped_silently() {
    let lake = Lake::new();
    lines(&lake, "a.ndjson", 0, 300, |n| {
        if n % 3 == 0 {
            format!(r#","tip":{n}.0,"promo":"p{n}""#)
        } else {
            String::new()
        }
    });
    let config = table_config(&lake, "");
    let running = Running::start(&config);
    let stats = running.stats.clone();
    running.finish().await;
    let status = status(&lake).await;
    assert_eq!(status.rows, 300);
    assert_eq!(status.unknown_fields.get("tip"), Some(&100), "{status:?}");
    assert_eq!(status.unknown_fields.get("promo"), Some(&100));
    let text = sluice::cli::status::render(&status);
    assert!(
        text.contains("unknown field `tip` in 100 record(s)"),
        "{text}"
    );
    let metrics = sluice::telemetry::metrics::render(
        &stats,
        &sluice::telemetry::metrics::Gauges {
            buffered_bytes: 0,
            budget_bytes: 1,
            ready: true,
            now_ms: 0,
        },
    );
    assert!(
        metrics.contains(r#"sluice_unknown_fields_total{table="events",field="tip"} 100"#),
        "{metrics}"
    );
    let schema = load(&lake.table("events"))
        .await
        .snapshot()
        .unwrap()
        .snapshot()
        .arrow_schema();
    assert!(
        schema.field_with_name("tip").is_err(),
        "not stored without evolve"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_columns_grows_the_table_in_the_commit_of_the_first_rows() {
    let lake = Lake::new();
    lines(&lake, "a.ndjson", 0, 200, |_| String::new());
    lines(&lake, "b.ndjson", 200, 400, |n| {
        format!(
            r#","tip":{n}.0,"driver":{{"name":"d{n}","rating":{}}},"odd-name":1"#,
            n % 5
        )
    });
    let config = table_config(&lake, "evolve = \"add_columns\"");
    ingest_to_end(&config).await;
    let table = lake.table("events");
    let batches = kernel_read(&table).await;
    let ids = strings(&batches, "event_id");
    let expected: Vec<String> = (0..400).map(|n| format!("e-{n}")).collect();
    assert_exactly_once(ids, &expected);
    let schema = batches
        .iter()
        .find(|b| b.column_by_name("tip").is_some())
        .unwrap()
        .schema();
    assert_eq!(
        schema.field_with_name("tip").unwrap().data_type(),
        &DataType::Float64
    );
    let DataType::Struct(driver) = schema.field_with_name("driver").unwrap().data_type() else {
        panic!("driver is a struct: {schema:?}");
    };
    assert_eq!(driver.len(), 2);
    assert!(
        schema.field_with_name("odd-name").is_err(),
        "names readers need mapping for are not added"
    );
    let mut tips = std::collections::HashMap::new();
    for batch in &batches {
        let ids = strings(std::slice::from_ref(batch), "event_id");
        let tip = batch
            .column_by_name("tip")
            .unwrap()
            .as_primitive::<arrow::datatypes::Float64Type>();
        for (row, id) in ids.iter().enumerate() {
            tips.insert(id.clone(), tip.is_valid(row).then(|| tip.value(row)));
        }
    }
    assert_eq!(tips["e-5"], None, "older rows read null");
    assert_eq!(tips["e-300"], Some(300.0));
    let growing: Vec<_> = commits_with_operation(&table, "STREAMING UPDATE")
        .into_iter()
        .filter(|c| c.iter().any(|a| a.get("metaData").is_some()))
        .collect();
    assert_eq!(growing.len(), 1, "one commit grows the schema");
    assert!(growing[0].iter().any(|a| a.get("add").is_some()));
    let status = status(&lake).await;
    assert_eq!(status.unknown_fields.get("odd-name"), Some(&200));
    assert_eq!(
        status.unknown_fields.get("tip"),
        None,
        "an added field is no longer unknown"
    );
    register_for_spark(&table, "json_evolved", 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_types_of_the_columns_added_before() {
    let lake = Lake::new();
    lines(&lake, "a.ndjson", 0, 150, |n| format!(r#","tip":{n}.5"#));
    let config = table_config(&lake, "evolve = \"add_columns\"");
    ingest_to_end(&config).await;
    // The next run's first value of `tip` is an integer: it stays a double.
    lines(&lake, "b.ndjson", 150, 300, |_| r#","tip":2"#.to_string());
    ingest_to_end(&config).await;
    let batches = kernel_read(&lake.table("events")).await;
    let expected: Vec<String> = (0..300).map(|n| format!("e-{n}")).collect();
    assert_exactly_once(strings(&batches, "event_id"), &expected);
    let mut twos = 0;
    for batch in &batches {
        let tip = batch.column_by_name("tip").unwrap();
        assert_eq!(tip.data_type(), &DataType::Float64);
        let tip = tip.as_primitive::<arrow::datatypes::Float64Type>();
        twos += (0..tip.len())
            .filter(|&i| tip.is_valid(i) && tip.value(i) == 2.0)
            .count();
    }
    assert_eq!(twos, 150);
}
