//! Bad configs and arguments stop before anything is written, naming the key.

use std::process::Command;

use sluice::config::{Config, ConfigError};

fn problems(text: &str) -> String {
    match Config::parse(text, "test.toml").and_then(|c| c.validate().map(|_| c)) {
        Ok(_) => panic!("config should be rejected:\n{text}"),
        Err(e) => e.to_string(),
    }
}

const GOOD: &str = r#"
[lake]
root = "/tmp/never-written"
[[sources]]
kind = "file"
name = "f"
path = "x.ndjson"
[[tables]]
name = "t"
source = "f"
key = "user_id"
columns = [{ name = "user_id", type = "string" }, { name = "at", type = "timestamp" }]
"#;

#[test]
fn the_good_config_is_valid() {
    Config::parse(GOOD, "good").unwrap().validate().unwrap();
}

#[test]
fn a_table_may_merge_several_sources() {
    let second = "[[sources]]\nkind = \"file\"\nname = \"g\"\npath = \"y.ndjson\"\n[[tables]]";
    let both = GOOD
        .replace("[[tables]]", second)
        .replace("source = \"f\"", "source = [\"f\", \"g\"]");
    let config = Config::parse(&both, "both").unwrap();
    config.validate().unwrap();
    let names: Vec<_> = config
        .sources_for(&config.tables[0])
        .map(|s| s.name())
        .collect();
    assert_eq!(names, ["f", "g"]);

    let unknown = problems(&both.replace("\"g\"]", "\"h\"]"));
    assert!(
        unknown.contains("tables[0].source[1]") && unknown.contains("unknown source `h`"),
        "{unknown}"
    );
    let none = problems(&GOOD.replace("source = \"f\"", "source = []"));
    assert!(none.contains("tables[0].source"), "{none}");
    let not_a_name = problems(&GOOD.replace("source = \"f\"", "source = 3"));
    assert!(not_a_name.contains("source name"), "{not_a_name}");
}

#[test]
fn errors_name_the_key_and_the_reason() {
    let unknown_field = problems(&GOOD.replace("name = \"t\"", "name = \"t\"\nflush_every = 3"));
    assert!(unknown_field.contains("flush_every"), "{unknown_field}");

    let unknown_source = problems(&GOOD.replace("source = \"f\"", "source = \"nope\""));
    assert!(
        unknown_source.contains("tables[0].source") && unknown_source.contains("nope"),
        "{unknown_source}"
    );

    let bad_key = problems(&GOOD.replace("key = \"user_id\"", "key = \"customer\""));
    assert!(
        bad_key.contains("tables[0].key") && bad_key.contains("customer"),
        "{bad_key}"
    );

    let bad_type = problems(&GOOD.replace("type = \"timestamp\"", "type = \"timestmp\""));
    assert!(
        bad_type.contains("tables[0].columns[1].type") && bad_type.contains("timestmp"),
        "{bad_type}"
    );

    let bad_partition = problems(&GOOD.replace(
        "key = \"user_id\"",
        "key = \"user_id\"\npartition_by = [\"at\"]",
    ));
    assert!(
        bad_partition.contains("partition_by[0]") && bad_partition.contains("derive"),
        "{bad_partition}"
    );

    let bad_property = problems(&GOOD.replace(
        "key = \"user_id\"",
        "key = \"user_id\"\nproperties = { \"delta.appendOnly\" = \"true\", \"delta.logRetentionDuration\" = \"7 days\", \"owner\" = \"me\" }",
    ));
    for expected in [
        "tables[0].properties.\"delta.appendOnly\"",
        "tables[0].properties.\"delta.logRetentionDuration\"",
        "`7 days` is not an interval",
        "tables[0].properties.\"owner\"",
    ] {
        assert!(
            bad_property.contains(expected),
            "{expected}: {bad_property}"
        );
    }
    let short_secret = problems(&GOOD.replace(
        "[[sources]]",
        "[erasure]\nkey_hash_secret = \"short\"\n[[sources]]",
    ));
    assert!(
        short_secret.contains("erasure.key_hash_secret") && short_secret.contains("16 bytes"),
        "{short_secret}"
    );

    let bad_size = problems(&GOOD.replace(
        "[[sources]]",
        "[batching]\nmax_bytes = \"12 parsecs\"\n[[sources]]",
    ));
    assert!(bad_size.contains("parsecs"), "{bad_size}");

    let reserved = problems(&GOOD.replace(
        "kind = \"file\"\nname = \"f\"\npath = \"x.ndjson\"",
        "kind = \"kafka\"\nname = \"f\"\nbrokers = \"b:9092\"\ntopics = [\"t\"]\ngroup_id = \"g\"\nproperties = { \"enable.auto.commit\" = \"true\" }",
    ));
    assert!(reserved.contains("enable.auto.commit"), "{reserved}");

    let listen = problems(&GOOD.replace(
        "[[sources]]",
        "[service]\nlisten = \"everywhere\"\n[[sources]]",
    ));
    assert!(
        listen.contains("service.listen") && listen.contains("everywhere"),
        "{listen}"
    );

    let deadline = problems(&GOOD.replace(
        "[[sources]]",
        "[erasure]\ndeadline = \"3days\"\n[[sources]]",
    ));
    assert!(deadline.contains("erasure.deadline"), "{deadline}");
}

#[test]
fn several_problems_are_reported_together() {
    let text = GOOD
        .replace("key = \"user_id\"", "key = \"customer\"")
        .replace("source = \"f\"", "source = \"nope\"");
    let Err(ConfigError::Invalid(problems)) = Config::parse(&text, "t").unwrap().validate() else {
        panic!("expected invalid");
    };
    assert!(problems.len() >= 2, "{problems:?}");
}

#[test]
fn the_cli_refuses_a_bad_config_without_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let config = dir.path().join("bad.toml");
    let text = GOOD
        .replace("/tmp/never-written", &lake.display().to_string())
        .replace("key = \"user_id\"", "key = \"customer\"");
    std::fs::write(&config, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["ingest", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tables[0].key"), "{stderr}");
    assert!(!lake.exists(), "nothing may be written for a bad config");

    let missing_env = GOOD.replace("/tmp/never-written", "${SLUICE_TEST_UNSET_VARIABLE}");
    std::fs::write(&config, missing_env).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["ingest", "--check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("SLUICE_TEST_UNSET_VARIABLE"));
}

#[test]
fn the_readme_example_config_is_valid() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("```toml\n")
        .expect("a toml block in the README")
        + 8;
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    // The example interpolates ${ENV}; give every variable it names a value.
    for name in [
        "KAFKA_BROKERS",
        "KAFKA_USER",
        "KAFKA_PASSWORD",
        "AWS_KEY",
        "AWS_SECRET",
        "AZURE_KEY",
        "GCS_KEY_JSON",
    ] {
        std::env::set_var(name, "x");
    }
    std::env::set_var("SLUICE_KEY_SECRET", "a-secret-of-at-least-16-bytes");
    let config = Config::parse(block, "README.md").unwrap();
    config.validate().unwrap();
    assert_eq!(config.sources_for(&config.tables[0]).count(), 2);
}

const PATTERN: &str = r#"
[lake]
root = "/tmp/never-written"
[[sources]]
kind = "kafka"
name = "prod"
brokers = "127.0.0.1:9"
group_id = "g"
topic_pattern = '^prod\..+'
[[table_templates]]
source = "prod"
topic = '^prod\.(?P<service>[^.]+)\.(?P<message>[^.]+)$'
name = "{service}__{message}"
key = "user_id"
columns = [{ name = "user_id", type = "string" }]
"#;

#[test]
fn pattern_sources_and_templates_are_checked_before_anything_runs() {
    Config::parse(PATTERN, "pattern")
        .unwrap()
        .validate()
        .unwrap();
    let both = problems(&PATTERN.replace("group_id = \"g\"", "group_id = \"g\"\ntopics = [\"a\"]"));
    assert!(
        both.contains("sources[0].topic_pattern") && both.contains("not both"),
        "{both}"
    );
    let bad_regex = problems(&PATTERN.replace(r"'^prod\..+'", "'^prod(('"));
    assert!(
        bad_regex.contains("sources[0].topic_pattern: not a regex"),
        "{bad_regex}"
    );
    let no_group = problems(&PATTERN.replace("{service}__{message}", "{team}__{message}"));
    assert!(
        no_group.contains("table_templates[0].name")
            && no_group.contains("`{team}` is not a group"),
        "{no_group}"
    );
    let no_template =
        problems(&PATTERN.replace("source = \"prod\"\ntopic", "source = \"other\"\ntopic"));
    assert!(
        no_template.contains("table_templates[0].source")
            && no_template
                .contains("no `[[table_templates]]` entry takes the topics of source `prod`"),
        "{no_template}"
    );
    let bad_key = problems(&PATTERN.replace("key = \"user_id\"", "key = \"customer.id\""));
    assert!(
        bad_key.contains("table_templates[0].key")
            && bad_key.contains("`customer.id` is not a declared column"),
        "{bad_key}"
    );
    let nested = PATTERN
        .replace("key = \"user_id\"", "key = \"customer.id\"")
        .replace(
            r#"columns = [{ name = "user_id", type = "string" }]"#,
            r#"columns = [{ name = "customer", type = "struct<id:string>" }]"#,
        );
    Config::parse(&nested, "nested")
        .unwrap()
        .validate()
        .unwrap();
    let table_on_pattern = problems(&format!(
        "{PATTERN}[[tables]]\nname = \"t\"\nsource = \"prod\"\nkey = \"user_id\"\ncolumns = [{{ name = \"user_id\", type = \"string\" }}]\n"
    ));
    assert!(
        table_on_pattern.contains("tables[0].source")
            && table_on_pattern.contains("its tables come from `[[table_templates]]`"),
        "{table_on_pattern}"
    );
}

#[test]
fn change_event_tables_are_checked_before_anything_runs() {
    let changes = GOOD.replace(
        "path = \"x.ndjson\"",
        "path = \"x.ndjson\"\nformat = \"debezium\"",
    );
    Config::parse(&changes, "changes")
        .unwrap()
        .validate()
        .unwrap();
    let reserved = problems(&changes.replace("name = \"at\"", "name = \"cdc_op\""));
    assert!(
        reserved.contains("tables[0].columns[1].name") && reserved.contains("change columns"),
        "{reserved}"
    );
    let before = problems(&GOOD.replace(
        "key = \"user_id\"",
        "key = \"user_id\"\nbefore_image = true",
    ));
    assert!(
        before.contains("tables[0].before_image") && before.contains("debezium"),
        "{before}"
    );
    let evolving = problems(&changes.replace(
        "key = \"user_id\"",
        "key = \"user_id\"\nevolve = \"add_columns\"",
    ));
    assert!(evolving.contains("tables[0].evolve"), "{evolving}");

    // Mirror tables.
    let mirror =
        |extra: &str| changes.replace("key = \"user_id\"", &format!("key = \"user_id\"\n{extra}"));
    Config::parse(
        &mirror("mode = \"mirror\"\nprimary_key = [\"user_id\"]"),
        "mirror",
    )
    .unwrap()
    .validate()
    .unwrap();
    let keyless = problems(&mirror("mode = \"mirror\""));
    assert!(
        keyless.contains("tables[0].primary_key") && keyless.contains("identify a row"),
        "{keyless}"
    );
    let undeclared = problems(&mirror(
        "mode = \"mirror\"\nprimary_key = [\"user_id\", \"order_id\"]",
    ));
    assert!(
        undeclared.contains("tables[0].primary_key[1]")
            && undeclared.contains("`order_id` is not a declared column"),
        "{undeclared}"
    );
    let timed = problems(&mirror("mode = \"mirror\"\nprimary_key = [\"at\"]"));
    assert!(
        timed.contains("tables[0].primary_key[0]") && timed.contains("string or an integer"),
        "{timed}"
    );
    let both = problems(&mirror(
        "mode = \"mirror\"\nprimary_key = [\"user_id\"]\nbefore_image = true",
    ));
    assert!(
        both.contains("tables[0].before_image") && both.contains("latest image"),
        "{both}"
    );
    let events = problems(&GOOD.replace(
        "key = \"user_id\"",
        "key = \"user_id\"\nmode = \"mirror\"\nprimary_key = [\"user_id\"]",
    ));
    assert!(
        events.contains("tables[0].mode") && events.contains("change events"),
        "{events}"
    );
    let appended = problems(&mirror("primary_key = [\"user_id\"]"));
    assert!(
        appended.contains("tables[0].primary_key") && appended.contains("mirror"),
        "{appended}"
    );
    // Deletion vectors: a mirror's choice; an append table only appends.
    Config::parse(
        &mirror("mode = \"mirror\"\nprimary_key = [\"user_id\"]\ndeletion_vectors = false"),
        "copy-on-write",
    )
    .unwrap()
    .validate()
    .unwrap();
    for text in [
        mirror("deletion_vectors = true"),
        GOOD.replace(
            "key = \"user_id\"",
            "key = \"user_id\"\ndeletion_vectors = true",
        ),
    ] {
        let vectors = problems(&text);
        assert!(
            vectors.contains("tables[0].deletion_vectors")
                && vectors.contains("applies to mirror tables"),
            "{vectors}"
        );
    }
}
