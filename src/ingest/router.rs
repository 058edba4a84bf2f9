//! Tables by template: one Kafka consumer subscribed by `topic_pattern`
//! feeds the table each of its topics resolves to, made on the topic's
//! first record.
//!
//! The consumer's events come here and are split by topic. A topic is
//! resolved once: the first `[[table_templates]]` entry of the source whose
//! regex matches names its table (see [`crate::config::template`]). On the
//! topic's first record its table gets a channel and a task of its own,
//! which types the table (the topic's registry subject or descriptor
//! message, as for a configured table), opens or creates it (two workers
//! creating it at once: one creation wins, the other opens it), gives it
//! its suppressor and maintenance loop, and then runs its pipeline on the
//! events that queued meanwhile. The router goes on routing the other
//! topics' records while a table starts, so a slow start (a registry that
//! does not answer, an object store's round trips) holds up only its own
//! topic; assignments that arrived before the first record are handed to
//! the table first. A revocation that reaches a table still starting is
//! answered at once (nothing of it is committed yet): the revoked
//! partitions' held records are released. Positions are looked up in the
//! table each topic resolves to ([`lookup`]), so a table that does not
//! exist yet starts the topic from `start_from`.
//!
//! A topic no template takes, whose table name another topic already
//! takes (without `merge`), or whose schema cannot be resolved is refused:
//! one warning, `sluice_topics_refused_total`, and a note `sluice catalog`
//! shows ([`crate::catalog::refused`]). Its records are released unread and
//! nothing is recorded for it, so once a template takes it (after a
//! restart) it is read from the start. A table whose schema cannot be
//! resolved hands what queued for it back to the router
//! ([`Started::Refused`]), which routes it again in order: the refused
//! topic's records are released, and a topic merged into the same table
//! starts it anew.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::budget::MemoryBudget;
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
#[derive(Clone)]
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
    /// Tables started (or starting) by name.
    /// topics that have fed it.
    pipelines: HashMap<String, Table>,
    /// Assignments of topics whose table has no pipeline yet.
    waiting: HashMap<String, Vec<crate::source::Assignment>>,
    /// Each table's task: its start, then its pipeline.
    tasks: JoinSet<(String, Result<(), IngestError>)>,
    maintenance: Vec<tokio::task::JoinHandle<()>>,
    /// Stops the tables' starts and pipelines when the router stops.
    starts: CancellationToken,
    /// What starting tables report back.
    started: (
        mpsc::UnboundedSender<Started>,
        mpsc::UnboundedReceiver<Started>,
    ),
}

/// A table the router has started, or is starting.
struct Table {
    /// Its events. Unbounded: the router never waits for one table (the
    /// memory budget bounds the records queued), and a table that is
    /// still starting holds what comes for it meanwhile.
    tx: mpsc::UnboundedSender<SourceEvent>,
    /// The data table's URL.
    url: url::Url,
    /// The topics that have fed it.
    feeders: BTreeSet<String>,
    /// True once the table exists.
    ready: tokio::sync::watch::Receiver<bool>,
}

/// What a table's task tells the router while it starts.
#[derive(Debug)]
enum Started {
    /// The table's maintenance loop, awaited when the router stops.
    Maintenance(tokio::task::JoinHandle<()>),
    /// The topic that started `table` is refused. The router closes the
    /// table's channel and routes again what queued for it (`queued`, then
    /// what is left in `rest`): the refused topic's records are released,
    /// and a topic merged into the same table starts it anew.
    Refused {
        topic: String,
        table: String,
        reason: String,
        queued: Vec<SourceEvent>,
        rest: mpsc::UnboundedReceiver<SourceEvent>,
    },
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
        let parts_shutdown_child = parts.shutdown.child_token();
        Self {
            parts,
            routes: HashMap::new(),
            pipelines: HashMap::new(),
            waiting: HashMap::new(),
            tasks: JoinSet::new(),
            maintenance: Vec::new(),
            started: mpsc::unbounded_channel(),
            starts: parts_shutdown_child,
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
                Some(started) = self.started.1.recv() => {
                    if let Err(error) = self.note_started(started).await {
                        failure = Some(error);
                        self.parts.shutdown.cancel();
                        break;
                    }
                }
            }
        }
        // The consumer is gone (or routing failed): starts stop, and the
        // pipelines commit what they hold and stop.
        self.starts.cancel();
        self.pipelines.clear();
        while let Some(joined) = self.tasks.join_next().await {
            if let Some(error) = joined_error(joined) {
                failure.get_or_insert(error);
            }
        }
        self.parts.control.stop();
        while let Ok(started) = self.started.1.try_recv() {
            match started {
                Started::Maintenance(handle) => self.maintenance.push(handle),
                Started::Refused { queued, rest, .. } => {
                    release_all(&self.parts.budget, queued, rest)
                }
            }
        }
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
                            Some(Table { tx, .. }) => {
                                let _ = tx.send(SourceEvent::Assigned(group));
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
                        if let Err(error) = self.start(&topic, &table) {
                            self.release(&group);
                            return Err(error);
                        }
                    }
                    let tx = self.pipelines[&table.name].tx.clone();
                    self.note_feeder(&topic, &table.name);
                    if let Some(assigned) = self.waiting.remove(&topic) {
                        let _ = tx.send(SourceEvent::Assigned(assigned));
                    }
                    let _ = tx.send(SourceEvent::Records(group));
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
                    if let Some(Table { tx, .. }) = self.pipelines.get(&table.name) {
                        let (answer, wait) = std::sync::mpsc::channel();
                        if tx
                            .send(SourceEvent::Revoked {
                                partitions: group,
                                done: Some(answer),
                            })
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
                    let _ = tx.send(SourceEvent::Reseeked(partition));
                }
            }
            SourceEvent::Trimmed { partition, detail } => {
                if let Some(tx) = self.pipeline_of(&partition) {
                    let _ = tx.send(SourceEvent::Trimmed { partition, detail });
                }
            }
            SourceEvent::Failed(message) => {
                for Table { tx, .. } in self.pipelines.values() {
                    let _ = tx.send(SourceEvent::Failed(message.clone()));
                }
            }
            SourceEvent::End => {
                for Table { tx, .. } in self.pipelines.values() {
                    let _ = tx.send(SourceEvent::End);
                }
            }
        }
        Ok(())
    }

    /// The running pipeline `partition`'s records go to.
    fn pipeline_of(&self, partition: &PartitionId) -> Option<mpsc::UnboundedSender<SourceEvent>> {
        match self.routes.get(topic_of(partition)) {
            Some(Route::Table(table)) => self.pipelines.get(&table.name).map(|t| t.tx.clone()),
            _ => None,
        }
    }

    /// Takes what a starting table reports. A refusal closes the table's
    /// channel and routes what queued in it again, all of it before
    /// anything the consumer sends later, so each topic's records keep
    /// their order.
    async fn note_started(&mut self, started: Started) -> Result<(), IngestError> {
        match started {
            Started::Maintenance(handle) => self.maintenance.push(handle),
            Started::Refused {
                topic,
                table,
                reason,
                queued,
                mut rest,
            } => {
                self.routes.insert(topic, Route::Refused(reason));
                // Its only sender: `rest` now holds all that will ever come.
                self.pipelines.remove(&table);
                for event in queued {
                    self.route(event).await?;
                }
                while let Ok(event) = rest.try_recv() {
                    self.route(event).await?;
                }
            }
        }
        Ok(())
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
            refuse(&self.parts, topic, reason).await;
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
        let merge = merges(&self.parts, topic);
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

    /// Notes, once per run, that `topic` feeds `table`: a table several
    /// topics feed lists each in `sluice.sources` (in the background once
    /// the table exists; a failure is a warning).
    fn note_feeder(&mut self, topic: &str, table: &str) {
        let known = |t: &Table| t.feeders.contains(topic);
        if self.pipelines.get(table).is_none_or(known) {
            return;
        }
        let merges = merges(&self.parts, topic);
        let Some(started) = self.pipelines.get_mut(table) else {
            return;
        };
        started.feeders.insert(topic.to_string());
        if !merges {
            return;
        }
        let (url, entry) = (started.url.clone(), format!("kafka:{topic}"));
        let mut ready = started.ready.clone();
        let options = self.parts.config.lake.storage_options.clone();
        let name = table.to_string();
        tokio::spawn(async move {
            // A start that ends without the table (refused, stopped) drops its sender.
            if ready.wait_for(|ready| *ready).await.is_err() {
                return;
            }
            if let Err(error) = table::about::add_source(&url, &options, &entry).await {
                tracing::warn!(table = %name, source = %entry, %error, "sluice.sources not updated");
            }
        });
    }

    fn release(&self, records: &[crate::source::Record]) {
        self.parts
            .budget
            .release(records.iter().map(|r| r.charge()).sum());
    }

    /// Gives `table` (first record of `topic`) its channel and starts it
    /// in a task of its own: the router routes on meanwhile, and the
    /// table's events queue until its pipeline runs.
    fn start(&mut self, topic: &str, table: &TableConfig) -> Result<(), IngestError> {
        let (data_url, _) = super::table_urls(&self.parts.config, table)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (made, ready) = tokio::sync::watch::channel(false);
        self.pipelines.insert(
            table.name.clone(),
            Table {
                tx,
                url: data_url,
                feeders: BTreeSet::new(),
                ready,
            },
        );
        let start = Start {
            // Starts stop when the router does, shutdown or not.
            parts: RouterParts {
                shutdown: self.starts.clone(),
                ..self.parts.clone()
            },
            topic: topic.to_string(),
            table: table.clone(),
            started: self.started.0.clone(),
            made,
        };
        let name = table.name.clone();
        self.tasks.spawn(async move { (name, start.run(rx).await) });
        Ok(())
    }
}

/// Reports `topic` refused: a metric, one warning and a note for `sluice catalog`.
async fn refuse(parts: &RouterParts, topic: &str, reason: &str) {
    crate::telemetry::metrics::topic_refused(topic);
    tracing::warn!(source = %parts.source.name, topic, reason, "topic refused: its records are not ingested");
    let note = RefusedTopic {
        source: parts.source.name.clone(),
        topic: topic.to_string(),
        reason: reason.to_string(),
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let config = &parts.config;
    if let Err(error) =
        refused::record(&config.lake.root, &config.lake.storage_options, &note).await
    {
        tracing::warn!(topic, %error, "could not note the refused topic for the catalog");
    }
}

/// Whether the template that takes `topic` lets several topics feed one table.
fn merges(parts: &RouterParts, topic: &str) -> bool {
    parts
        .config
        .table_templates
        .iter()
        .filter(|t| t.source == parts.source.name)
        .find(|t| t.matches(topic))
        .is_some_and(|t| t.merge)
}

/// One table's start, made on its first topic's first record.
struct Start {
    parts: RouterParts,
    topic: String,
    table: TableConfig,
    started: mpsc::UnboundedSender<Started>,
    /// Set once the table exists.
    made: tokio::sync::watch::Sender<bool>,
}

/// How a table's start ended.
enum Prepared {
    /// The table is ready: its pipeline.
    Pipeline(Box<super::pipeline::Pipeline>),
    /// The topic is refused, for this reason.
    Refused(String),
    /// The worker stops.
    Stopped,
}

impl Start {
    /// Starts the table, holding what comes for it meanwhile, then runs
    /// its pipeline on what it holds and what follows. A refused start
    /// hands its events back to the router; a stopped one releases them.
    async fn run(
        self,
        mut events: mpsc::UnboundedReceiver<SourceEvent>,
    ) -> Result<(), IngestError> {
        let budget = self.parts.budget.clone();
        let mut queued = Vec::new();
        let prepared = {
            let prepare = self.prepare();
            tokio::pin!(prepare);
            loop {
                tokio::select! {
                    prepared = &mut prepare => break prepared?,
                    Some(event) = events.recv() => hold(&budget, &mut queued, event),
                }
            }
        };
        match prepared {
            Prepared::Pipeline(pipeline) => {
                let (tx, rx) = mpsc::channel(CHANNEL_EVENTS);
                let forward = async move {
                    let mut queued = queued.into_iter();
                    loop {
                        let event = match queued.next() {
                            Some(event) => Some(event),
                            None => events.recv().await,
                        };
                        // The router is done with the table: its pipeline commits and ends.
                        let Some(event) = event else { break };
                        if tx.send(event).await.is_err() {
                            break;
                        }
                    }
                    drop(tx);
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    result = pipeline.run(rx, self.parts.shutdown.clone()) => {
                        result.map_err(IngestError::Pipeline)
                    }
                    _ = forward => unreachable!("forwarding never ends"),
                }
            }
            Prepared::Refused(reason) => {
                refuse(&self.parts, &self.topic, &reason).await;
                let refused = Started::Refused {
                    topic: self.topic.clone(),
                    table: self.table.name.clone(),
                    reason,
                    queued,
                    rest: events,
                };
                if let Err(unsent) = self.started.send(refused) {
                    if let Started::Refused { queued, rest, .. } = unsent.0 {
                        release_all(&budget, queued, rest);
                    }
                }
                Ok(())
            }
            Prepared::Stopped => {
                release_all(&budget, queued, events);
                Ok(())
            }
        }
    }

    /// The table's pipeline, unless the topic is refused instead (the
    /// router told) or the worker stops first.
    async fn prepare(&self) -> Result<Prepared, IngestError> {
        let (parts, topic, table_config) = (&self.parts, self.topic.as_str(), &self.table);
        let config = parts.config.clone();
        let mut source = parts.source.clone();
        source.topics = vec![topic.to_string()];
        source.topic_pattern = None;
        let source = SourceConfig::Kafka(source);
        let (decoder, schema_source) =
            match decode::decoder_for(table_config, &source, &parts.shutdown).await {
                Ok(typed) => typed,
                Err(DecoderError::Stopped) => return Ok(Prepared::Stopped),
                Err(error) => return Ok(Prepared::Refused(error.to_string())),
            };
        let mut about = table::about::About::of(&config, table_config, &schema_source);
        about
            .properties
            .insert(table::about::SOURCES.to_string(), format!("kafka:{topic}"));
        if let Some(template) = config
            .table_templates
            .iter()
            .filter(|t| t.source == parts.source.name)
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
        if merges(parts, topic) {
            // Several topics feed the table: each adds itself to
            // `sluice.sources` when it first does ([`Router::note_feeder`]).
            about.properties.remove(table::about::SOURCES);
        }
        let tables = open_tables(&config, table_config, &decoder, &about).await?;
        self.made.send_replace(true);
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
                _ = parts.shutdown.cancelled() => return Ok(Prepared::Stopped),
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
            &parts.shutdown,
        )
        .await
        {
            return Ok(Prepared::Stopped);
        }
        parts
            .suppressors
            .lock()
            .expect("suppressors lock")
            .push(suppressor.clone());
        let kinesis_clients = HashMap::new();
        let worker_parts = WorkerParts {
            id: &parts.worker,
            budget: &parts.budget,
            stats: &parts.stats,
            kinesis_clients: &kinesis_clients,
        };
        let data_url = tables.data_url.clone();
        let pipeline = pipeline_for(
            &config,
            table_config,
            &parts.source.name,
            decoder,
            tables,
            &worker_parts,
            suppressor,
            parts.control.clone(),
        )?;
        refused::clear(
            &config.lake.root,
            &config.lake.storage_options,
            &parts.source.name,
            topic,
        )
        .await;
        crate::telemetry::metrics::table_started(&table_config.name);
        tracing::info!(topic, table = %table_config.name, "topic takes its table from a template");
        if config.maintenance.enabled {
            let handle = super::spawn_maintenance(
                &config,
                table_config,
                data_url,
                &parts.worker,
                &parts.maintenance_stop,
            )
            .await?;
            let _ = self.started.send(Started::Maintenance(handle));
        }
        Ok(Prepared::Pipeline(Box::new(pipeline)))
    }
}

/// Holds `event` for a table that is starting. A revocation is answered
/// at once: nothing of the table is committed yet, so the revoked
/// partitions' held records are released and their assignments dropped
/// (the partitions' next owner reads them from the table's position).
fn hold(budget: &MemoryBudget, queued: &mut Vec<SourceEvent>, event: SourceEvent) {
    let SourceEvent::Revoked { partitions, done } = event else {
        queued.push(event);
        return;
    };
    let revoked = |p: &Arc<PartitionId>| partitions.contains(p);
    for held in queued.iter_mut() {
        match held {
            SourceEvent::Records(records) => {
                let (gone, kept) = std::mem::take(records)
                    .into_iter()
                    .partition(|r| revoked(&r.partition));
                *records = kept;
                budget.release(
                    gone.iter()
                        .map(|r: &crate::source::Record| r.charge())
                        .sum(),
                );
            }
            SourceEvent::Assigned(assigned) => assigned.retain(|a| !revoked(&a.partition)),
            _ => {}
        }
    }
    if let Some(done) = done {
        let _ = done.send(());
    }
}

/// Releases the records of a table that will not run, and answers its
/// revocations, until its channel is closed and empty.
fn release_all(
    budget: &MemoryBudget,
    queued: Vec<SourceEvent>,
    mut rest: mpsc::UnboundedReceiver<SourceEvent>,
) {
    let release = |event: SourceEvent| match event {
        SourceEvent::Records(records) => budget.release(records.iter().map(|r| r.charge()).sum()),
        SourceEvent::Revoked {
            done: Some(done), ..
        } => {
            let _ = done.send(());
        }
        _ => {}
    };
    queued.into_iter().for_each(release);
    rest.close();
    while let Ok(event) = rest.try_recv() {
        release(event);
    }
}

fn joined_error(
    joined: Result<(String, Result<(), IngestError>), tokio::task::JoinError>,
) -> Option<IngestError> {
    match joined {
        Ok((_, Ok(()))) => None,
        Ok((_, Err(e))) => Some(e),
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
