//! Rules for a Kafka source's `format` and the keys that go with it.

use super::{FormatSpec, KafkaSourceConfig, RegistryConfig};
use crate::config::Format;

/// Adds a problem for each format key that is missing, misplaced or wrong.
pub(super) fn check_kafka_format(
    k: &KafkaSourceConfig,
    spec: &FormatSpec<'_>,
    key: &str,
    add: &mut impl FnMut(String, String),
) {
    let protobuf_keys =
        k.descriptor_set.is_some() || k.message.is_some() || k.topic_convention.is_some();
    match (k.format, &k.registry, &k.schema_file) {
        (Format::Json, None, None) => {
            if protobuf_keys {
                add(
                    format!("{key}.descriptor_set"),
                    "`descriptor_set`, `message` and `topic_convention` go with `format = \"protobuf\"`".into(),
                );
            }
        }
        (Format::Json, _, _) => add(
            format!("{key}.format"),
            "`registry` and `schema_file` go with `format = \"avro\"` or `\"protobuf\"`".into(),
        ),
        (Format::Protobuf, _, Some(_)) => add(
            format!("{key}.schema_file"),
            "`schema_file` is for Avro; Protobuf takes `descriptor_set` or `[sources.registry]`".into(),
        ),
        (Format::Protobuf, Some(_), None) if k.descriptor_set.is_some() => add(
            format!("{key}.descriptor_set"),
            "give either `registry` (the registry wire format) or `descriptor_set` (plain messages), not both".into(),
        ),
        (Format::Protobuf, Some(registry), None) => {
            check_registry(registry, key, add);
            check_subject(k, key, add);
            if k.message.is_some() && k.topic_convention.is_some() {
                add(
                    format!("{key}.message"),
                    "give either `message` or `topic_convention`, not both".into(),
                );
            }
        }
        // A pattern source's topics are resolved as they appear.
        (Format::Protobuf, None, None) if k.topic_pattern.is_some() => {
            if let Err(reason) = crate::decode::protobuf::read_descriptor_set(
                k.descriptor_set.as_deref().unwrap_or_default(),
            ) {
                add(format!("{key}.descriptor_set"), reason);
            }
        }
        (Format::Protobuf, None, None) => match crate::decode::protobuf_message(spec) {
            Ok(message) => {
                if let Err(reason) = crate::decode::protobuf::check_message(&message) {
                    add(format!("{key}.message"), reason);
                }
            }
            Err(reason) => add(format!("{key}.format"), reason),
        },
        (Format::Debezium, None, None) if !protobuf_keys => {}
        // The Avro and Protobuf converters' envelopes, through the registry
        // (`message` or `topic_convention` names a Protobuf envelope's message).
        (Format::Debezium, Some(registry), None) if k.descriptor_set.is_none() => {
            check_registry(registry, key, add);
            check_subject(k, key, add);
            if k.message.is_some() && k.topic_convention.is_some() {
                add(
                    format!("{key}.message"),
                    "give either `message` or `topic_convention`, not both".into(),
                );
            }
        }
        (Format::Debezium, _, _) => add(
            format!("{key}.format"),
            "`format = \"debezium\"` reads the JSON envelope, or the Avro and Protobuf converters' through `[sources.registry]` (`message` or `topic_convention` may name a Protobuf envelope's message); `schema_file` and `descriptor_set` do not apply".into(),
        ),
        (Format::Avro, _, _) if protobuf_keys => add(
            format!("{key}.descriptor_set"),
            "`descriptor_set`, `message` and `topic_convention` go with `format = \"protobuf\"`".into(),
        ),
        (Format::Avro, None, None) => add(
            format!("{key}.registry"),
            "`format = \"avro\"` needs `[sources.registry]` (registry wire format) or `schema_file` (plain Avro bodies)".into(),
        ),
        (Format::Avro, Some(_), Some(_)) => add(
            format!("{key}.schema_file"),
            "give either `registry` or `schema_file`, not both".into(),
        ),
        (Format::Avro, Some(registry), None) => {
            check_registry(registry, key, add);
            check_subject(k, key, add);
        }
        (Format::Avro, None, Some(file)) => {
            if let Err(reason) = crate::decode::avro::read_schema_file(file) {
                add(format!("{key}.schema_file"), reason);
            }
        }
    }
}

fn check_registry(registry: &RegistryConfig, key: &str, add: &mut impl FnMut(String, String)) {
    if !registry.url.starts_with("http://") && !registry.url.starts_with("https://")
        || url::Url::parse(&registry.url).is_err()
    {
        add(
            format!("{key}.registry.url"),
            format!("`{}` is not an http(s) URL", registry.url),
        );
    }
    if registry.username.is_some() != registry.password.is_some() {
        add(
            format!("{key}.registry"),
            "give both `username` and `password`, or neither".into(),
        );
    }
}

fn check_subject(k: &KafkaSourceConfig, key: &str, add: &mut impl FnMut(String, String)) {
    // A pattern source's topics each take their own `<topic>-value`.
    if k.subject.is_none() && k.topics.len() != 1 && k.topic_pattern.is_none() {
        add(
            format!("{key}.subject"),
            "name the subject whose schema types the table (several topics: no default `<topic>-value`)".into(),
        );
    }
}
