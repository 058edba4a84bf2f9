//! Tables by template: one Kafka consumer subscribed by `topic_pattern`
//! feeds the table each of its topics resolves to, made on the topic's
//! first record.
//!
//! The consumer's events come here and are split by topic. A topic is
//! resolved once: the first `[[table_templates]]` entry of the source whose
//! regex matches names its table (see [`crate::config::template`]). On the
//! topic's first record its table is typed (the topic's registry subject or
//! descriptor message, as for a configured table), opened or created (two
//! workers creating it at once: one creation wins, the other opens it),
//! given its suppressor and maintenance loop, and a pipeline of its own;
//! assignments that arrived before are handed to it first. Positions are
//! looked up in the table each topic resolves to ([`lookup`]), so a table
//! that does not exist yet starts the topic from `start_from`.
//!
//! A topic no template takes, whose table name another topic already
//! takes (without `merge`), or whose schema cannot be resolved is refused:
//! one warning, `sluice_topics_refused_total`, and a note `sluice catalog`
//! shows ([`crate::catalog::refused`]). Its records are released unread and
//! nothing is recorded for it, so once a template takes it (after a
//! restart) it is read from the start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::budget::MemoryBudget;
use super::pipeline::PipelineError;
use super::{open_tables, pipeline_for, IngestError, WorkerParts, CHANNEL_EVENTS};
use crate::catalog::refused::{self, RefusedTopic};
use crate::config::{Config, KafkaSourceConfig, SourceConfig, TableConfig};
use crate::decode::{self, DecoderError};
use crate::erase::suppress::{self, Suppressor, SuppressorSet};
use crate::source::{PartitionId, PositionLookup, SourceControl, SourceEvent};
use crate::table;
use crate::telemetry::stats::IngestStats;

/// What a topic resolved to.
#[derive(Debug, Clone)]
enum Route {
    /// Its records go to this table.
    Table(Box<TableConfig>),
    /// It has no table, for this reason.
    Refused(String),
}

/// The table config of `topic` under `source`'s templates, or why none.
fn resolve(config: &Config, source: &str, topic: &str) -> Result<TableConfig, String> {
    config
        .table_templates
        .iter()
        .filter(|t| t.source == source)
        .find_map(|t| t.table_for(topic))
        .ok_or_else(|| {
            format!("no `[[table_templates]]` entry of source `{source}` matches the topic's name")
        })
}

/// A position lookup that asks, for each topic, the table its template
/// names (nothing recorded where that table does not exist yet).
pub fn lookup(config: Arc<Config>, source: String) -> PositionLookup {
    Arc::new(move |app_ids: Vec<String>| {
        let config = config.clone();
        let source = source.clone();
        Box::pin(async move {
            let prefix = format!("sluice/{source}/");
            let mut by_table: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for app_id in app_ids {
                let topic = app_id
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.rsplit_once('/'))
                    .map(|(topic, _)| topic.to_string());
                if let Some(Ok(table)) = topic.map(|t| resolve(&config, &source, &t)) {
                    by_table.entry(table.name).or_default().push(app_id);
                }
            }
            let mut found = HashMap::new();
            for (name, ids) in by_table {
                let location = table::child_location(&config.lake.root, &name);
                let url = table::resolve_location(&location).map_err(|e| e.to_string())?;
                match table::open(&url, &config.lake.storage_options).await {
                    Ok(opened) => found.extend(
                        table::recorded_positions(&opened, &ids)
                            .await
                            .map_err(|e| format!("table {url}: {e}"))?,
                    ),
                    Err(table::TableError::NotATable(_)) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(found)
        })
    })
}

/// What the router needs of its worker.
pub struct RouterParts {
    /// The whole config (templates, lake, batching, maintenance).
    pub config: Arc<Config>,
    /// The pattern source.
    pub source: KafkaSourceConfig,
    /// This worker's id.
    pub worker: String,
    /// The worker's memory budget.
    pub budget: Arc<MemoryBudget>,
    /// The worker's counters.
    pub stats: Arc<IngestStats>,
    /// The consumer, shared by every table's pipeline (seeks, stop).
    pub control: Arc<dyn SourceControl>,
    /// The worker's suppressors; new tables join it.
    pub suppressors: SuppressorSet,
    /// Fires on shutdown.
    pub shutdown: CancellationToken,
    /// Stops maintenance loops.
    pub maintenance_stop: CancellationToken,
}

/// Splits a pattern source's events among the tables its topics resolve to.
pub struct Router {
    parts: RouterParts,
    routes: HashMap<String, Route>,
    /// Running pipelines by table name, with the table's URL and the
    /// topics that have fed it.
    pipelines: HashMap<String, (mpsc::Sender<SourceEvent>, url::Url, BTreeSet<String>)>,
    /// Assignments of topics whose table has no pipeline yet.
    waiting: HashMap<String, Vec<crate::source::Assignment>>,
    tasks: JoinSet<(String, Result<(), PipelineError>)>,
    maintenance: Vec<tokio::task::JoinHandle<()>>,
}

fn topic_of(partition: &PartitionId) -> &str {
    &partition.stream
}

/// Splits items by topic, keeping their order within each topic (and the
/// topics in order of first appearance).
fn by_topic<T>(items: Vec<T>, topic: impl Fn(&T) -> &str) -> Vec<(String, Vec<T>)> {
    let mut out: Vec<(String, Vec<T>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for item in items {
        // Records of one topic come in runs: check the last group first.
        let at = match out.last() {
            Some((last, _)) if last == topic(&item) => out.len() - 1,
            _ => match index.get(topic(&item)) {
                Some(&at) => at,
                None => {
                    index.insert(topic(&item).to_string(), out.len());
                    out.push((topic(&item).to_string(), Vec::new()));
                    out.len() - 1
                }
            },
        };
        out[at].1.push(item);
    }
    out
}

impl Router {
    /// A router with no tables yet.
    pub fn new(parts: RouterParts) -> Self {
        Self {
            parts,
            routes: HashMap::new(),
            pipelines: HashMap::new(),
            waiting: HashMap::new(),
            tasks: JoinSet::new(),
            maintenance: Vec::new(),
        }
    }

    /// Routes `events` until the consumer is gone, then waits for the
    /// pipelines to commit what they hold.
    pub async fn run(mut self, mut events: mpsc::Receiver<SourceEvent>) -> Result<(), IngestError> {
        let mut failure = None;
        let mut stopping = false;
        loop {
            tokio::select! {
                // Stop consuming; events keep coming until the consumer has
                // left the group (revocations let the pipelines commit).
                _ = self.parts.shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    self.parts.control.stop();
                }
                event = events.recv() => match event {
                    None => break,
                    Some(event) => {
                        if let Err(error) = self.route(event).await {
                            failure = Some(error);
                            self.parts.shutdown.cancel();
                            break;
                        }
                    }
                },
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Some(error) = joined_error(joined) {
                        failure = Some(error);
                        self.parts.shutdown.cancel();
                        break;
                    }
                }
            }
        }
        // The consumer is gone (or routing failed): the pipelines commit
        // what they hold and stop once their channels close.
        self.pipelines.clear();
        while let Some(joined) = self.tasks.join_next().await {
            if let Some(error) = joined_error(joined) {
                failure.get_or_insert(error);
            }
        }
        self.parts.control.stop();
        for handle in self.maintenance.drain(..) {
            let _ = handle.await;
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    async fn route(&mut self, event: SourceEvent) -> Result<(), IngestError> {
        match event {
            SourceEvent::Assigned(assignments) => {
                for (topic, group) in by_topic(assignments, |a| topic_of(&a.partition)) {
                    match self.route_of(&topic).await {
                        Route::Refused(_) => {}
                        Route::Table(table) => match self.pipelines.get(&table.name) {
                            Some((tx, _, _)) => {
                                let _ = tx.send(SourceEvent::Assigned(group)).await;
                            }
                            None => self.waiting.entry(topic).or_default().extend(group),
                        },
                    }
                }
            }
            SourceEvent::Records(records) => {
                for (topic, group) in by_topic(records, |r| topic_of(&r.partition)) {
                    let table = match self.route_of(&topic).await {
                        Route::Table(table) => table,
                        Route::Refused(_) => {
                            self.release(&group);
                            continue;
                        }
                    };
                    if !self.pipelines.contains_key(&table.name) {
                        match self.start(&topic, &table).await {
                            Ok(true) => {}
                            Ok(false) => {
                                self.release(&group);
                                continue;
                            }
                            Err(error) => {
                                self.release(&group);
                                return Err(error);
                            }
                        }
                    }
                    let tx = self.pipelines[&table.name].0.clone();
                    self.note_feeder(&topic, &table.name);
                    if let Some(assigned) = self.waiting.remove(&topic) {
                        let _ = tx.send(SourceEvent::Assigned(assigned)).await;
                    }
                    let _ = tx.send(SourceEvent::Records(group)).await;
                }
            }
            SourceEvent::Revoked { partitions, done } => {
                let mut answers = Vec::new();
                for (topic, group) in by_topic(partitions, |p| topic_of(p)) {
                    if let Some(waiting) = self.waiting.get_mut(&topic) {
                        waiting.retain(|a| !group.contains(&a.partition));
                    }
                    let Some(Route::Table(table)) = self.routes.get(&topic) else {
                        continue;
                    };
                    if let Some((tx, _, _)) = self.pipelines.get(&table.name) {
                        let (answer, wait) = std::sync::mpsc::channel();
                        if tx
                            .send(SourceEvent::Revoked {
                                partitions: group,
                                done: Some(answer),
                            })
                            .await
                            .is_ok()
                        {
                            answers.push(wait);
                        }
                    }
                }
                let grace = self.parts.config.batching.shutdown_grace.0;
                tokio::task::spawn_blocking(move || {
                    for wait in answers {
                        let _ = wait.recv_timeout(grace);
                    }
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                });
            }
            SourceEvent::Reseeked(partition) => {
                if let Some(tx) = self.pipeline_of(&partition) {
                    let _ = tx.send(SourceEvent::Reseeked(partition)).await;
                }
            }
            SourceEvent::Trimmed { partition, detail } => {
                if let Some(tx) = self.pipeline_of(&partition) {
                    let _ = tx.send(SourceEvent::Trimmed { partition, detail }).await;
                }
            }
            SourceEvent::Failed(message) => {
                for (tx, _, _) in self.pipelines.values() {
                    let _ = tx.send(SourceEvent::Failed(message.clone())).await;
                }
            }
            SourceEvent::End => {
                for (tx, _, _) in self.pipelines.values() {
                    let _ = tx.send(SourceEvent::End).await;
                }
            }
        }
        Ok(())
    }

    /// The running pipeline `partition`'s records go to.
    fn pipeline_of(&self, partition: &PartitionId) -> Option<mpsc::Sender<SourceEvent>> {
        match self.routes.get(topic_of(partition)) {
            Some(Route::Table(table)) => {
                self.pipelines.get(&table.name).map(|(tx, _, _)| tx.clone())
            }
            _ => None,
        }
    }

    /// The route of `topic`, resolved (and a refusal reported) once.
    async fn route_of(&mut self, topic: &str) -> Route {
        if let Some(route) = self.routes.get(topic) {
            return route.clone();
        }
        let route = match resolve(&self.parts.config, &self.parts.source.name, topic) {
            Ok(table) => self.check_name(topic, Box::new(table)),
            Err(reason) => Route::Refused(reason),
        };
        if let Route::Refused(reason) = &route {
            self.refuse(topic, reason).await;
        }
        self.routes.insert(topic.to_string(), route.clone());
        route
    }

    /// Refuses a table name a configured table or another topic's table
    /// already has, unless the template merges topics.
    fn check_name(&self, topic: &str, table: Box<TableConfig>) -> Route {
        if self
            .parts
            .config
            .tables
            .iter()
            .any(|t| t.name == table.name)
        {
            return Route::Refused(format!(
                "its table name `{}` is a configured table's",
                table.name
            ));
        }
        let merge = self.merges(topic);
        let taken = self.routes.iter().find(|(other, route)| {
            *other != topic && matches!(route, Route::Table(t) if t.name == table.name)
        });
        match taken {
            Some((other, _)) if !merge => Route::Refused(format!(
                "its table name `{}` is already topic `{other}`'s (set `merge = true` on the template to feed one table from several topics)",
                table.name
            )),
            _ => Route::Table(table),
        }
    }

    /// Whether the template that takes `topic` lets several topics feed
    /// one table.
    fn merges(&self, topic: &str) -> bool {
        self.parts
            .config
            .table_templates
            .iter()
            .filter(|t| t.source == self.parts.source.name)
            .find(|t| t.matches(topic))
            .is_some_and(|t| t.merge)
    }

    /// Notes, once per run, that `topic` feeds `table`: a table several
    /// topics feed lists each in `sluice.sources` (in the background; a
    /// failure is a warning).
    fn note_feeder(&mut self, topic: &str, table: &str) {
        let known = |(_, _, topics): &(_, _, BTreeSet<String>)| topics.contains(topic);
        if self.pipelines.get(table).is_none_or(known) {
            return;
        }
        let merges = self.merges(topic);
        let Some((_, url, topics)) = self.pipelines.get_mut(table) else {
            return;
        };
        topics.insert(topic.to_string());
        if !merges {
            return;
        }
        let (url, entry) = (url.clone(), format!("kafka:{topic}"));
        let options = self.parts.config.lake.storage_options.clone();
        let name = table.to_string();
        tokio::spawn(async move {
            if let Err(error) = table::about::add_source(&url, &options, &entry).await {
                tracing::warn!(table = %name, source = %entry, %error, "sluice.sources not updated");
            }
        });
    }

    async fn refuse(&self, topic: &str, reason: &str) {
        crate::telemetry::metrics::topic_refused(topic);
        tracing::warn!(source = %self.parts.source.name, topic, reason, "topic refused: its records are not ingested");
        let note = RefusedTopic {
            source: self.parts.source.name.clone(),
            topic: topic.to_string(),
            reason: reason.to_string(),
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let config = &self.parts.config;
        if let Err(error) =
            refused::record(&config.lake.root, &config.lake.storage_options, &note).await
        {
            tracing::warn!(topic, %error, "could not note the refused topic for the catalog");
        }
    }

    fn release(&self, records: &[crate::source::Record]) {
        self.parts
            .budget
            .release(records.iter().map(|r| r.charge()).sum());
    }

    /// Starts the pipeline of `table` (first record of `topic`); `false`
    /// when the topic is refused instead.
    async fn start(
        &mut self,
        topic: &str,
        table_config: &TableConfig,
    ) -> Result<bool, IngestError> {
        let config = self.parts.config.clone();
        let mut source = self.parts.source.clone();
        source.topics = vec![topic.to_string()];
        source.topic_pattern = None;
        let source = SourceConfig::Kafka(source);
        let (decoder, schema_source) =
            match decode::decoder_for(table_config, &source, &self.parts.shutdown).await {
                Ok(typed) => typed,
                Err(DecoderError::Stopped) => return Ok(false),
                Err(error) => {
                    let reason = error.to_string();
                    self.refuse(topic, &reason).await;
                    self.routes
                        .insert(topic.to_string(), Route::Refused(reason));
                    return Ok(false);
                }
            };
        let mut about = table::about::About::of(&config, table_config, &schema_source);
        about
            .properties
            .insert(table::about::SOURCES.to_string(), format!("kafka:{topic}"));
        if let Some(template) = config
            .table_templates
            .iter()
            .filter(|t| t.source == self.parts.source.name)
            .find(|t| t.matches(topic))
        {
            about
                .properties
                .insert(table::about::TEMPLATE.to_string(), template.name.clone());
            let fields: Vec<String> = template
                .fields(topic)
                .into_iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            about
                .properties
                .insert(table::about::CONVENTION.to_string(), fields.join(","));
        }
        if self.merges(topic) {
            // Several topics feed the table: each adds itself to
            // `sluice.sources` when it first does ([`Router::note_feeder`]).
            about.properties.remove(table::about::SOURCES);
        }
        let tables = open_tables(&config, table_config, &decoder, &about).await?;
        // Requests filed for every table cover this one from its first record.
        let mut delay = std::time::Duration::from_millis(200);
        loop {
            let now_ms = chrono::Utc::now().timestamp_millis();
            match crate::erase::join_new_table(
                &config,
                &table_config.name,
                &decoder.table_schema(),
                now_ms,
            )
            .await
            {
                Ok(joined) => {
                    if !joined.is_empty() {
                        tracing::info!(table = %table_config.name, requests = joined.len(), "new table joins the erasure requests filed for every table");
                    }
                    break;
                }
                Err(error) => {
                    tracing::warn!(table = %table_config.name, %error, retry_in = ?delay, "cannot read the erasure ledger; the table waits");
                }
            }
            tokio::select! {
                _ = self.parts.shutdown.cancelled() => return Ok(false),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(std::time::Duration::from_secs(10));
        }
        let suppressor = Suppressor::new(
            &table_config.name,
            decoder.table_schema(),
            config.erasure.key_hasher(),
        );
        if !suppress::first_refresh(
            &config.lake.root,
            &config.lake.storage_options,
            std::slice::from_ref(&suppressor),
            &self.parts.shutdown,
        )
        .await
        {
            return Ok(false);
        }
        self.parts
            .suppressors
            .lock()
            .expect("suppressors lock")
            .push(suppressor.clone());
        let kinesis_clients = HashMap::new();
        let worker_parts = WorkerParts {
            id: &self.parts.worker,
            budget: &self.parts.budget,
            stats: &self.parts.stats,
            kinesis_clients: &kinesis_clients,
        };
        let data_url = tables.data_url.clone();
        let pipeline = pipeline_for(
            &config,
            table_config,
            &self.parts.source.name,
            decoder,
            tables,
            &worker_parts,
            suppressor,
            self.parts.control.clone(),
        )?;
        let (tx, rx) = mpsc::channel(CHANNEL_EVENTS);
        let token = self.parts.shutdown.clone();
        let name = table_config.name.clone();
        self.tasks
            .spawn(async move { (name, pipeline.run(rx, token).await) });
        self.pipelines.insert(
            table_config.name.clone(),
            (tx, data_url.clone(), BTreeSet::new()),
        );
        refused::clear(
            &config.lake.root,
            &config.lake.storage_options,
            &self.parts.source.name,
            topic,
        )
        .await;
        crate::telemetry::metrics::table_started(&table_config.name);
        tracing::info!(topic, table = %table_config.name, "topic takes its table from a template");
        if config.maintenance.enabled {
            self.maintenance.push(
                super::spawn_maintenance(
                    &config,
                    table_config,
                    data_url,
                    &self.parts.worker,
                    &self.parts.maintenance_stop,
                )
                .await?,
            );
        }
        Ok(true)
    }
}

fn joined_error(
    joined: Result<(String, Result<(), PipelineError>), tokio::task::JoinError>,
) -> Option<IngestError> {
    match joined {
        Ok((_, Ok(()))) => None,
        Ok((_, Err(e))) => Some(IngestError::Pipeline(e)),
        Err(e) => Some(IngestError::Task("?".into(), e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_grouped_by_topic_in_order() {
        let items = vec![("a", 1), ("a", 2), ("b", 3), ("a", 4), ("c", 5), ("b", 6)];
        let groups = by_topic(items, |(t, _)| t);
        let got: Vec<(String, Vec<i32>)> = groups
            .into_iter()
            .map(|(t, g)| (t, g.into_iter().map(|(_, n)| n).collect()))
            .collect();
        assert_eq!(
            got,
            [
                ("a".to_string(), vec![1, 2, 4]),
                ("b".to_string(), vec![3, 6]),
                ("c".to_string(), vec![5]),
            ]
        );
    }
}
