//! The poll → decode → batch → sink → offsets loop.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foldline_schemas::wire::EventCodec;
use foldline_service::config::EventLog;
use foldline_service::kafka;
use foldline_service::ops::{Ops, ReadinessCheck};
use foldline_service::retry::{self, Delays};
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::net::TcpListener;

use crate::context::RuntimeContext;
use crate::dead_letter::{DeadLetter, DeadLetterQueue};
use crate::{Batch, Flush, Record, RuntimeMetrics, Sink, SinkError, Written};

/// Settings every consumer shares; a consumer binary flattens them into its own config.
#[derive(clap::Args, Debug, Clone)]
pub struct RuntimeConfig {
    /// Brokers, registry and the topic to consume.
    #[command(flatten)]
    pub log: EventLog,
    /// Where undecodable records go.
    #[arg(long, env = "FOLDLINE_DLQ_TOPIC", default_value = "products.dlq")]
    pub dead_letter_topic: String,
    /// Most records per batch.
    #[arg(long, env = "FOLDLINE_BATCH_RECORDS", default_value_t = 5000)]
    pub max_batch_records: usize,
    /// Most value bytes per batch.
    #[arg(long, env = "FOLDLINE_BATCH_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_batch_bytes: usize,
    /// Longest a batch waits for more records after its first one, in ms.
    #[arg(long, env = "FOLDLINE_BATCH_WAIT_MS", default_value_t = 20)]
    pub max_batch_wait_ms: u64,
    /// After this long without records the sink is asked to flush what it holds back, in ms.
    #[arg(long, env = "FOLDLINE_IDLE_FLUSH_MS", default_value_t = 1000)]
    pub idle_flush_ms: u64,
}

/// How long a stopping consumer keeps trying to flush what its sink holds back; after that it
/// stops anyway (what was not flushed is read again from the group's offsets on restart).
const SHUTDOWN_FLUSH_LIMIT: Duration = Duration::from_secs(30);

/// What the runtime needs besides the shared settings.
pub struct Consumer<S> {
    pub service: &'static str,
    pub version: &'static str,
    pub group_id: String,
    pub config: RuntimeConfig,
    pub sink: S,
}

type Kafka = StreamConsumer<RuntimeContext>;

/// What a consumer binary's `main` ends with: binds `listen` for the ops routes and runs the
/// consumer until SIGINT or SIGTERM (finishing and flushing the batch in flight).
pub async fn run_until_signal<S: Sink>(consumer: Consumer<S>, listen: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    run(consumer, listener, foldline_service::shutdown::signal()).await
}

/// Serves `/health`, `/ready`, `/metrics` on `listener` and runs the consumer until
/// `shutdown` resolves; the batch in flight is finished first.
pub async fn run<S: Sink>(
    consumer: Consumer<S>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let joined = Arc::new(AtomicBool::new(false));
    let generation = Arc::new(AtomicU64::new(0));
    let healthy = Arc::new(AtomicBool::new(true));
    let ops = Ops::new(
        consumer.service,
        consumer.version,
        readiness(joined.clone(), healthy.clone()),
    );
    let metrics = RuntimeMetrics::new(&ops.registry);
    consumer.sink.register_metrics(&ops.registry);
    let config = &consumer.config;
    let kafka: Kafka = kafka::base_config(&config.log.brokers, consumer.service)
        .set("group.id", &consumer.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("statistics.interval.ms", "5000")
        // A crashed instance's partitions move to the others after this long.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        // A sink outage stops polling; after this long the group moves our partitions away
        // (harmless: sinks check their stored offsets) and we join again once it is back.
        .set("max.poll.interval.ms", "300000")
        .set("fetch.wait.max.ms", "20")
        .create_with_context(RuntimeContext {
            topic: config.log.topic.clone(),
            metrics: metrics.clone(),
            joined: joined.clone(),
            generation: generation.clone(),
        })?;
    kafka.subscribe(&[&config.log.topic])?;
    let loop_state = Loop {
        codec: EventCodec::new(&config.log.registry_url, &config.log.topic)?,
        dead_letters: DeadLetterQueue::new(
            &config.log.brokers,
            &config.log.topic,
            &config.dead_letter_topic,
            &consumer.group_id,
        )?,
        kafka,
        metrics,
        healthy,
        config: config.clone(),
        generation,
        read_from: Mutex::default(),
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ops_server = tokio::spawn(foldline_service::serve::serve(
        listener,
        ops.instrument(ops.routes()),
        {
            let mut stop = stop_rx.clone();
            async move {
                let _ = stop.wait_for(|s| *s).await;
            }
        },
    ));
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let result = loop_state.run(consumer.sink, stop_rx).await;
    ops_server.abort();
    result
}

fn readiness(joined: Arc<AtomicBool>, healthy: Arc<AtomicBool>) -> ReadinessCheck {
    foldline_service::ops::readiness(move || {
        let joined = joined.load(Ordering::Acquire);
        let healthy = healthy.load(Ordering::Acquire);
        async move {
            match (joined, healthy) {
                (false, _) => Err("waiting for the consumer group to assign partitions".to_owned()),
                (_, false) => Err("the sink is unavailable; retrying".to_owned()),
                _ => Ok(()),
            }
        }
    })
}

struct Loop {
    codec: EventCodec,
    dead_letters: DeadLetterQueue,
    kafka: Kafka,
    metrics: RuntimeMetrics,
    healthy: Arc<AtomicBool>,
    config: RuntimeConfig,
    generation: Arc<AtomicU64>,
    /// Where each partition is read on from, valid for one rebalance generation.
    read_from: Mutex<(u64, BTreeMap<i32, i64>)>,
}

impl Loop {
    async fn run<S: Sink>(
        &self,
        mut sink: S,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let idle = Duration::from_millis(self.config.idle_flush_ms);
        loop {
            let first = tokio::select! {
                message = self.kafka.recv() => Some(message),
                _ = tokio::time::sleep(idle) => None,
                _ = stop.wait_for(|s| *s) => break,
            };
            let Some(first) = first else {
                if !self.flush(&mut sink, Flush::Idle, &mut stop).await? {
                    break;
                }
                continue;
            };
            let generation = self.generation.load(Ordering::Acquire);
            let mut batch = Batch {
                read_from: self.known_positions(),
                generation,
                ..Batch::default()
            };
            let mut letters = Vec::new();
            match first {
                Ok(message) => self.take(&message, &mut batch, &mut letters).await,
                Err(error) => {
                    tracing::warn!(%error, "poll failed");
                    continue;
                }
            }
            self.fill(&mut batch, &mut letters).await;
            let now = self.generation.load(Ordering::Acquire);
            if now != generation {
                // A rebalance happened meanwhile: where partitions were read from is unknown.
                batch.read_from.clear();
                batch.generation = now;
            }
            if !letters.is_empty() {
                self.publish_dead_letters(&letters, &mut stop).await?;
            }
            if !self.write(&mut sink, &batch, &mut stop).await? {
                break;
            }
        }
        self.flush_before_shutdown(&mut sink).await;
        tracing::info!("consumer stopped");
        Ok(())
    }

    /// Gives the sink a bounded time to write out what it holds back, then commits that.
    async fn flush_before_shutdown<S: Sink>(&self, sink: &mut S) {
        // The run's stop signal has fired; retries here get a fresh one and a time limit.
        let (_keep, mut never) = tokio::sync::watch::channel(false);
        let flushed = tokio::time::timeout(
            SHUTDOWN_FLUSH_LIMIT,
            self.flush(sink, Flush::Shutdown, &mut never),
        )
        .await;
        match flushed {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "flush before shutdown failed"),
            Err(_) => {
                tracing::warn!("flush before shutdown timed out; the rest is read again on restart")
            }
        }
    }

    fn known_positions(&self) -> BTreeMap<i32, i64> {
        let mut known = self.read_from.lock().expect("not poisoned");
        let generation = self.generation.load(Ordering::Acquire);
        if known.0 != generation {
            *known = (generation, BTreeMap::new());
        }
        known.1.clone()
    }

    fn note_positions(&self, positions: BTreeMap<i32, i64>) {
        let mut known = self.read_from.lock().expect("not poisoned");
        let generation = self.generation.load(Ordering::Acquire);
        if known.0 != generation {
            *known = (generation, BTreeMap::new());
        }
        known.1.extend(positions);
    }

    /// Adds what arrives within the batch window, up to the count and byte limits.
    async fn fill(&self, batch: &mut Batch, letters: &mut Vec<DeadLetter>) {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.max_batch_wait_ms);
        while batch.records.len() + letters.len() < self.config.max_batch_records
            && batch.bytes < self.config.max_batch_bytes
        {
            match tokio::time::timeout_at(deadline, self.kafka.recv()).await {
                Ok(Ok(message)) => self.take(&message, batch, letters).await,
                Ok(Err(error)) => tracing::warn!(%error, "poll failed"),
                Err(_) => break,
            }
        }
    }

    /// Decodes one record into the batch, or into a dead letter when it cannot be decoded.
    /// A registry that does not answer is waited for: that is not the record's fault.
    async fn take(
        &self,
        message: &BorrowedMessage<'_>,
        batch: &mut Batch,
        letters: &mut Vec<DeadLetter>,
    ) {
        let (partition, offset) = (message.partition(), message.offset());
        let payload = message.payload();
        batch.consumed(partition, offset, payload.map_or(0, <[u8]>::len));
        let letter = |reason: String| DeadLetter {
            partition,
            offset,
            key: message.key().map(<[u8]>::to_vec),
            value: payload.map(<[u8]>::to_vec),
            reason,
        };
        let Some(bytes) = payload else {
            letters.push(letter("empty value (tombstone)".into()));
            return;
        };
        match self.codec.decode_waiting(bytes).await {
            Ok(event) => batch.records.push(Record {
                partition,
                offset,
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                timestamp_ms: message.timestamp().to_millis(),
                event,
            }),
            Err(error) => {
                tracing::warn!(partition, offset, %error, "undecodable record sent to the dead-letter topic");
                letters.push(letter(error.to_string()));
            }
        }
    }

    async fn publish_dead_letters(
        &self,
        letters: &[DeadLetter],
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut delays = Delays::new(retry::forever(
            Duration::from_millis(200),
            Duration::from_secs(10),
        ));
        loop {
            match self.dead_letters.publish(letters).await {
                Ok(0) => break,
                Ok(skipped) => {
                    // Read again after a crash before the batch was durable.
                    tracing::info!(
                        skipped,
                        "records this group had already dead-lettered were not appended again"
                    );
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "dead-letter topic unavailable; retrying");
                    if delays.sleep_or_stop(stop).await {
                        anyhow::bail!("stopped while the dead-letter topic was unavailable");
                    }
                }
            }
        }
        for letter in letters {
            let reason = if letter.value.is_none() {
                "empty"
            } else {
                "undecodable"
            };
            self.metrics
                .dead_lettered
                .with_label_values(&[reason])
                .inc();
        }
        Ok(())
    }

    /// Writes the batch until it is durable (or the sink asks for a reseek). Returns false
    /// when asked to stop while the sink was unavailable (the batch will be read again).
    async fn write<S: Sink>(
        &self,
        sink: &mut S,
        batch: &Batch,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        let Some(Outcome::Written(written)) = self.call(sink, Call::Write(batch), stop).await?
        else {
            return Ok(false);
        };
        match written {
            Written::Done => {
                self.count(batch);
                let next = batch.next_offsets();
                self.commit(&next);
                self.note_positions(next);
            }
            Written::Partly(durable) => {
                self.count(batch);
                self.commit(&durable);
                self.note_positions(batch.next_offsets());
            }
            Written::Reseek(stored) => {
                // Nothing of the batch was written: every partition of it is read again, from
                // the sink's offset where it has one, else from where the batch was read from
                // (not its first record: transaction markers may lie between, and seeking past
                // them would lose the continuity the sink checks — on the next batch it would
                // ask to reseek that partition, and the two could alternate for ever).
                self.metrics.reseeks.inc();
                let mut targets: BTreeMap<i32, i64> = batch
                    .ranges
                    .iter()
                    .map(|(p, (first, _))| (*p, batch.read_from.get(p).copied().unwrap_or(*first)))
                    .collect();
                targets.extend(stored);
                tracing::info!(?targets, "moving to the sink's stored offsets");
                for (partition, offset) in &targets {
                    self.kafka.seek(
                        &self.config.log.topic,
                        *partition,
                        Offset::Offset(*offset),
                        Duration::from_secs(10),
                    )?;
                }
                self.note_positions(targets);
            }
        }
        Ok(true)
    }

    /// Asks the sink to flush what it holds back and commits what it reports durable.
    /// Returns false when asked to stop while the sink was unavailable.
    async fn flush<S: Sink>(
        &self,
        sink: &mut S,
        why: Flush,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        let Some(Outcome::Flushed(durable)) = self.call(sink, Call::Flush(why), stop).await? else {
            return Ok(false);
        };
        if !durable.is_empty() {
            // Before shutdown the commit must reach the group before the consumer closes.
            match why {
                Flush::Idle => self.commit(&durable),
                Flush::Shutdown => self.commit_with(&durable, CommitMode::Sync),
            }
        }
        Ok(true)
    }

    fn count(&self, batch: &Batch) {
        self.metrics.events.inc_by(batch.records.len() as u64);
        self.metrics
            .batch_records
            .observe(batch.records.len() as f64);
    }

    /// Calls the sink until it answers; a transient error pauses the assigned partitions and
    /// retries with backoff. `None` when asked to stop meanwhile.
    async fn call<S: Sink>(
        &self,
        sink: &mut S,
        call: Call<'_>,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<Option<Outcome>> {
        let mut delays = Delays::new(retry::forever(
            Duration::from_millis(100),
            Duration::from_secs(10),
        ));
        let mut paused: Option<TopicPartitionList> = None;
        let outcome = loop {
            let started = Instant::now();
            let result = match call {
                Call::Write(batch) => sink.write(batch).await.map(Outcome::Written),
                Call::Flush(why) => sink.flush(why).await.map(Outcome::Flushed),
            };
            match result {
                Ok(outcome) => {
                    self.metrics
                        .batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    break outcome;
                }
                Err(SinkError::Fatal(error)) => return Err(error),
                Err(SinkError::Transient(error)) => {
                    tracing::warn!(%error, "sink unavailable; partitions paused, retrying");
                    self.healthy.store(false, Ordering::Release);
                    self.metrics.sink_retries.inc();
                    if paused.is_none() {
                        let assignment = self.kafka.assignment()?;
                        self.kafka.pause(&assignment)?;
                        paused = Some(assignment);
                    }
                    if delays.sleep_or_stop(stop).await {
                        return Ok(None);
                    }
                }
            }
        };
        if let Some(assignment) = paused {
            self.kafka.resume(&assignment)?;
            self.healthy.store(true, Ordering::Release);
            tracing::info!("sink available again; partitions resumed");
        }
        Ok(Some(outcome))
    }

    /// Records progress in the group too, so a restart starts near where the sink is.
    fn commit(&self, next: &BTreeMap<i32, i64>) {
        self.commit_with(next, CommitMode::Async);
    }

    fn commit_with(&self, next: &BTreeMap<i32, i64>, mode: CommitMode) {
        let mut list = TopicPartitionList::new();
        for (partition, offset) in next {
            let _ = list.add_partition_offset(
                &self.config.log.topic,
                *partition,
                Offset::Offset(*offset),
            );
        }
        if let Err(error) = self.kafka.commit(&list, mode) {
            tracing::debug!(%error, "group offset commit failed (the sink's offsets still hold)");
        }
    }
}

#[derive(Clone, Copy)]
enum Call<'a> {
    Write(&'a Batch),
    Flush(Flush),
}

enum Outcome {
    Written(Written),
    Flushed(BTreeMap<i32, i64>),
}
