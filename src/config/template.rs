//! `[[table_templates]]`: what the table of a topic that a pattern source
//! (`topic_pattern`) finds gets, so a naming convention makes tables by
//! itself.
//!
//! A template names its source and a topic regex with named groups (the
//! convention's fields: `env`, `service`, `kind`, `file`, `message`, ...).
//! The first template (in file order) of the source whose regex matches a
//! topic makes the topic's table: its name from the `name` template
//! (`{service}__{message}`) normalised to letters, digits and underscores,
//! and everything else a `[[tables]]` entry takes, with `{group}`
//! references in `description` and `owner` filled in.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::table::{ColumnConfig, DerivedColumn, Evolve, MetadataColumn, TableConfig};

/// A table made for each topic a pattern source finds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TableTemplate {
    /// The pattern source (`topic_pattern`) whose topics it takes.
    pub source: String,
    /// A regex over the topic name with named groups, e.g.
    /// `^(?P<env>[^.]+)\.(?P<service>[^.]+)\.(?P<kind>[^.]+)\.(?P<file>[^.]+)\.(?P<message>[^.]+)$`.
    pub topic: String,
    /// The table name, with `{group}` references (`{service}__{message}`);
    /// characters other than letters, digits and `_` become `_`.
    pub name: String,
    /// The subject-key column of every table it makes.
    pub key: String,
    /// Declared columns (JSON sources; Avro and Protobuf tables are typed by
    /// their schema).
    #[serde(default)]
    pub columns: Vec<ColumnConfig>,
    /// Partition columns.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Derived columns.
    #[serde(default)]
    pub derived: Vec<DerivedColumn>,
    /// Source coordinates stored with each row.
    #[serde(default)]
    pub metadata_columns: Vec<MetadataColumn>,
    /// Z-order columns.
    #[serde(default)]
    pub zorder_by: Vec<String>,
    /// JSON tables: `none` or `add_columns`.
    #[serde(default)]
    pub evolve: Evolve,
    /// Delta table properties for new tables.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// The description, with `{group}` references.
    #[serde(default)]
    pub description: Option<String>,
    /// The owner, with `{group}` references.
    #[serde(default)]
    pub owner: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Whether several topics may feed one table (their names render to
    /// the same table name); otherwise the second topic is refused.
    #[serde(default)]
    pub merge: bool,
    /// `topic` compiled, on first use: a template is matched against every
    /// topic the source finds, and more than once per topic.
    #[serde(skip)]
    compiled: OnceLock<Result<Regex, String>>,
}

impl TableTemplate {
    /// The compiled topic regex.
    pub fn regex(&self) -> Result<&Regex, String> {
        self.compiled
            .get_or_init(|| Regex::new(&self.topic).map_err(|e| format!("not a regex: {e}")))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Whether the topic regex matches `topic` (the template makes its table).
    pub fn matches(&self, topic: &str) -> bool {
        self.regex().is_ok_and(|regex| regex.is_match(topic))
    }

    /// Problems with the template itself: the regex, and `{group}`
    /// references to groups it does not have.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let regex = match self.regex() {
            Ok(regex) => regex,
            Err(reason) => {
                out.push(("topic".to_string(), reason));
                return out;
            }
        };
        let groups: Vec<&str> = regex.capture_names().flatten().collect();
        for (key, text) in [
            ("name", Some(&self.name)),
            ("description", self.description.as_ref()),
            ("owner", self.owner.as_ref()),
        ] {
            let Some(text) = text else { continue };
            match references(text) {
                Ok(names) => {
                    for name in names {
                        if !groups.contains(&name.as_str()) {
                            out.push((
                                key.to_string(),
                                format!(
                                    "`{{{name}}}` is not a group of `topic` (groups: {groups:?})"
                                ),
                            ));
                        }
                    }
                }
                Err(reason) => out.push((key.to_string(), reason)),
            }
        }
        if self.name.trim().is_empty() {
            out.push(("name".into(), "must not be empty".into()));
        }
        out
    }

    /// The convention's fields of `topic` (the regex's named groups), in
    /// the regex's order.
    pub fn fields(&self, topic: &str) -> Vec<(String, String)> {
        let Ok(regex) = self.regex() else {
            return Vec::new();
        };
        let Some(captures) = regex.captures(topic) else {
            return Vec::new();
        };
        regex
            .capture_names()
            .flatten()
            .filter_map(|name| {
                captures
                    .name(name)
                    .map(|m| (name.to_string(), m.as_str().to_string()))
            })
            .collect()
    }

    /// What every table of the template has, for checks before any topic
    /// is seen (named `template`).
    pub fn shape(&self) -> TableConfig {
        TableConfig {
            source: vec![self.source.clone()],
            columns: self.columns.clone(),
            partition_by: self.partition_by.clone(),
            derived: self.derived.clone(),
            metadata_columns: self.metadata_columns.clone(),
            zorder_by: self.zorder_by.clone(),
            evolve: self.evolve,
            properties: self.properties.clone(),
            tags: self.tags.clone(),
            ..TableConfig::discovered("template", &self.key)
        }
    }

    /// The table config for `topic`, or `None` when the regex does not match.
    pub fn table_for(&self, topic: &str) -> Option<TableConfig> {
        let regex = self.regex().ok()?;
        let captures = regex.captures(topic)?;
        let fill = |text: &str| -> String {
            let mut out = String::new();
            let mut rest = text;
            while let Some(open) = rest.find('{') {
                out.push_str(&rest[..open]);
                let Some(close) = rest[open..].find('}') else {
                    break;
                };
                let name = &rest[open + 1..open + close];
                out.push_str(captures.name(name).map_or("", |m| m.as_str()));
                rest = &rest[open + close + 1..];
            }
            out.push_str(rest);
            out
        };
        Some(TableConfig {
            name: table_name(&fill(&self.name)),
            description: self.description.as_deref().map(fill),
            owner: self.owner.as_deref().map(fill),
            ..self.shape()
        })
    }
}

/// The `{group}` names a template text refers to.
fn references(text: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("`{text}`: a `{{` without its `}}`"))?;
        names.push(rest[open + 1..open + close].to_string());
        rest = &rest[open + close + 1..];
    }
    Ok(names)
}

/// A table name BigQuery and Spark take: letters, digits and underscores,
/// not starting with a digit, at most 1,024 characters.
pub fn table_name(rendered: &str) -> String {
    let mut name: String = rendered
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name.truncate(1024);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(name: &str) -> TableTemplate {
        toml::from_str(&format!(
            r#"
source = "prod"
topic = '^(?P<env>[^.]+)\.(?P<service>[^.]+)\.(?P<kind>[^.]+)\.(?P<file>[^.]+)\.(?P<message>[^.]+)$'
name = "{name}"
key = "user_id"
description = "{{message}} events of the {{service}} service"
owner = "{{service}}-team"
"#
        ))
        .unwrap()
    }

    #[test]
    fn a_topic_names_its_table_and_fills_the_descriptions() {
        let t = template("{service}__{message}");
        assert!(t.problems().is_empty(), "{:?}", t.problems());
        let table = t
            .table_for("prod.identity-service.audit.identity.AuditMessage")
            .unwrap();
        assert_eq!(table.name, "identity_service__AuditMessage");
        assert_eq!(
            table.description.as_deref(),
            Some("AuditMessage events of the identity-service service")
        );
        assert_eq!(table.owner.as_deref(), Some("identity-service-team"));
        assert_eq!(table.source, ["prod"]);
        assert!(t.table_for("not-a-convention-topic").is_none());
        assert!(t.matches("prod.identity-service.audit.identity.AuditMessage"));
        assert!(!t.matches("not-a-convention-topic"));
    }

    #[test]
    fn references_to_missing_groups_are_refused() {
        let problems = template("{team}__{message}").problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "name");
        assert!(
            problems[0].1.contains("`{team}` is not a group"),
            "{problems:?}"
        );
        assert_eq!(table_name("9.lives"), "_9_lives");
    }

    #[test]
    fn the_topic_regex_is_compiled_once_and_a_bad_one_stays_refused() {
        let t = template("{service}__{message}");
        let first: *const Regex = t.regex().unwrap();
        let second: *const Regex = t.regex().unwrap();
        assert_eq!(first, second, "compiled again");
        let bad: TableTemplate = toml::from_str(
            "source = \"prod\"\ntopic = '^(?P<env>'\nname = \"{env}\"\nkey = \"id\"",
        )
        .unwrap();
        for _ in 0..2 {
            let problems = bad.problems();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].0, "topic");
            assert!(problems[0].1.starts_with("not a regex"), "{problems:?}");
            assert!(bad.table_for("prod.x").is_none());
        }
    }
}
