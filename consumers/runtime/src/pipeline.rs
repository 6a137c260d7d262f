//! The consume loop's state machine: poll → decode → batch → dead letters → sink → offsets.
//! Written against [`Source`], [`Decoder`] and [`DeadLetters`] so it is tested without servers
//! (`pipeline/tests.rs`); [`crate::runner`] wires it to Kafka.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foldline_schemas::wire::CodecError;
use foldline_service::position::Offsets;
use foldline_service::retry::{self, Delays};
use rdkafka::consumer::CommitMode;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio::sync::{mpsc, watch};

use crate::dead_letter::DeadLetter;
use crate::error::{chain, BoxError, ConsumerError, SourceError};
use crate::parking::{Parked, ParkedSet, ParkingRequest, Resolved};
use crate::source::{DeadLetters, Decoder, Source};
use crate::{Batch, Flush, Record, RuntimeMetrics, Sink, SinkError, Written};

/// How long a stopping consumer keeps trying to flush what its sink holds back; after that it
/// stops anyway (what was not flushed is read again from the group's offsets on restart).
const SHUTDOWN_FLUSH_LIMIT: Duration = Duration::from_secs(30);

/// Limits of one batch and when to flush.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_records: usize,
    pub max_bytes: usize,
    pub max_wait: Duration,
    /// A batch closes before `max_wait` when no record came for this long: the log holds no
    /// more for now, so a trickle is written at once while a flood still fills batches (the
    /// records a write waits for are the ones already fetched, not the ones yet to come).
    pub quiet_gap: Duration,
    pub idle_flush: Duration,
}

pub struct Pipeline<Src, Dec, Dl> {
    pub source: Src,
    pub decoder: Dec,
    pub dead_letters: Dl,
    pub metrics: RuntimeMetrics,
    /// False while the sink is unavailable (for `/ready`).
    pub healthy: Arc<AtomicBool>,
    pub limits: Limits,
    /// Where each partition is read on from, valid for one rebalance generation.
    pub read_from: Mutex<(u64, Offsets)>,
    /// The products the sink keeps parked, and the rebalance generation they were read in
    /// (`None`: to be read from the sink again).
    parked: Mutex<(Option<u64>, ParkedSet)>,
    /// Operators' requests about parked records (`None` once taken by [`Pipeline::run`]).
    requests: tokio::sync::Mutex<Option<mpsc::Receiver<ParkingRequest>>>,
}

impl<Src: Source, Dec: Decoder, Dl: DeadLetters> Pipeline<Src, Dec, Dl> {
    pub fn new(
        source: Src,
        decoder: Dec,
        dead_letters: Dl,
        metrics: RuntimeMetrics,
        healthy: Arc<AtomicBool>,
        limits: Limits,
    ) -> Self {
        Pipeline {
            source,
            decoder,
            dead_letters,
            metrics,
            healthy,
            limits,
            read_from: Mutex::default(),
            parked: Mutex::default(),
            requests: tokio::sync::Mutex::new(None),
        }
    }

    /// Serves operators' requests about parked records (from the ops routes) between batches.
    pub fn with_parking_requests(self, requests: mpsc::Receiver<ParkingRequest>) -> Self {
        Pipeline {
            requests: tokio::sync::Mutex::new(Some(requests)),
            ..self
        }
    }

    /// Runs until `stop` turns true, then flushes what the sink holds back (bounded in time).
    pub async fn run<S: Sink>(
        &self,
        mut sink: S,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), ConsumerError> {
        let mut requests = self.requests.lock().await.take();
        loop {
            let first = tokio::select! {
                message = self.source.recv() => Some(Ok(message)),
                _ = tokio::time::sleep(self.limits.idle_flush) => None,
                _ = stop.wait_for(|s| *s) => break,
                Some(request) = next_request(&mut requests) => Some(Err(request)),
            };
            let first = match first {
                Some(Ok(message)) => Some(message),
                Some(Err(request)) => {
                    if !self.answer(&mut sink, request, &mut stop).await? {
                        break;
                    }
                    continue;
                }
                None => None,
            };
            let Some(first) = first else {
                if !self.flush(&mut sink, Flush::Idle, &mut stop).await? {
                    break;
                }
                continue;
            };
            let first = match first {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "poll failed");
                    continue;
                }
            };
            let generation = self.source.generation();
            let mut batch = Batch {
                read_from: self.known_positions(),
                generation,
                ..Batch::default()
            };
            let mut letters = Vec::new();
            self.take(&first, &mut batch, &mut letters).await;
            self.fill(&mut batch, &mut letters).await;
            let now = self.source.generation();
            if now != generation {
                // A rebalance happened meanwhile: where partitions were read from is unknown.
                batch.read_from.clear();
                batch.generation = now;
            }
            if !letters.is_empty() {
                self.publish_dead_letters(&letters, &mut stop).await?;
            }
            if !self.write_parking(&mut sink, &batch, &mut stop).await? {
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
        let (_keep, mut never) = watch::channel(false);
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

    /// What is known of where partitions are read from, forgotten at every rebalance.
    fn known_positions(&self) -> Offsets {
        self.with_known(|known| known.clone())
    }

    fn note_positions(&self, positions: &Offsets) {
        self.with_known(|known| known.merge(positions));
    }

    /// Runs `f` on the known positions of the current rebalance generation.
    fn with_known<T>(&self, f: impl FnOnce(&mut Offsets) -> T) -> T {
        let mut known = self.read_from.lock().expect("not poisoned");
        let generation = self.source.generation();
        if known.0 != generation {
            *known = (generation, Offsets::new());
        }
        f(&mut known.1)
    }

    /// Adds what arrives within the batch window, up to the count and byte limits, until the
    /// window ends or the log goes quiet for [`Limits::quiet_gap`].
    async fn fill(&self, batch: &mut Batch, letters: &mut Vec<DeadLetter>) {
        let deadline = tokio::time::Instant::now() + self.limits.max_wait;
        while batch.records.len() + letters.len() < self.limits.max_records
            && batch.bytes < self.limits.max_bytes
        {
            let until = deadline.min(tokio::time::Instant::now() + self.limits.quiet_gap);
            match tokio::time::timeout_at(until, self.source.recv()).await {
                Ok(Ok(message)) => self.take(&message, batch, letters).await,
                Ok(Err(error)) => tracing::warn!(%error, "poll failed"),
                Err(_) => break,
            }
        }
    }

    /// Decodes one record into the batch, or into a dead letter when it cannot be decoded.
    /// (The decoder waits out a registry that does not answer: that is not the record's fault.)
    async fn take(&self, message: &OwnedMessage, batch: &mut Batch, letters: &mut Vec<DeadLetter>) {
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
        if let Some(appended) = message.timestamp().to_millis() {
            let delay = (chrono::Utc::now().timestamp_millis() - appended).max(0) as f64 / 1000.0;
            self.metrics.fetched.observe(delay);
        }
        let decoding = std::time::Instant::now();
        let decoded = self.decoder.decode(bytes).await;
        self.metrics
            .decode
            .observe(decoding.elapsed().as_secs_f64());
        match decoded {
            Ok(event) => batch.records.push(Record::from_message(message, event)),
            Err(CodecError::NewerSchema(newer)) => {
                tracing::warn!(partition, offset, product = %newer.product_id, %newer,
                    "record written by a newer schema: its product is parked");
                batch.parked.push(Parked::newer(partition, offset, &newer));
            }
            Err(error) => {
                tracing::warn!(partition, offset, %error, "undecodable record sent to the dead-letter topic");
                letters.push(letter(error.to_string()));
            }
        }
    }

    /// Writes the batch until it is durable (or the sink asks for a reseek, or refuses its
    /// data).
    async fn write<S: Sink>(
        &self,
        sink: &mut S,
        batch: &Batch,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Step, ConsumerError> {
        let written = match self.call(sink, Call::Write(batch), stop).await? {
            None => return Ok(Step::Stopped),
            Some(Outcome::Refused(error)) => return Ok(Step::Refused(error)),
            Some(Outcome::Written(written)) => written,
            Some(_) => unreachable!("a write answers a write"),
        };
        match written {
            Written::Done => {
                self.count(batch);
                let next = batch.next_offsets();
                self.commit(&next, CommitMode::Async);
                self.note_positions(&next);
            }
            Written::Partly(durable) => {
                self.count(batch);
                self.commit(&durable, CommitMode::Async);
                self.note_positions(&batch.next_offsets());
            }
            Written::Reseek(stored) => {
                // Nothing of the batch was written: every partition of it is read again, from
                // the sink's offset where it has one, else from where the batch was read from
                // (not its first record: transaction markers may lie between, and seeking past
                // them would lose the continuity the sink checks — on the next batch it would
                // ask to reseek that partition, and the two could alternate for ever).
                self.metrics.reseeks.inc();
                let mut targets = batch.start_offsets();
                targets.merge(&stored);
                tracing::info!(%targets, "moving to the sink's stored offsets");
                let generation = self.source.generation();
                for (partition, offset) in targets.iter() {
                    self.source.seek(partition, offset)?;
                }
                // A rebalance meanwhile (or a seek it made impossible) leaves where the
                // partitions are read from unknown again.
                if self.source.generation() == generation {
                    self.note_positions(&targets);
                }
                // The sink's data may have changed under us (a rebuild swapped it in).
                self.parked.lock().expect("not poisoned").0 = None;
                return Ok(Step::Reseeked);
            }
        }
        Ok(Step::Written)
    }

    /// Asks the sink to flush what it holds back and commits what it reports durable.
    /// Returns false when asked to stop while the sink was unavailable.
    async fn flush<S: Sink>(
        &self,
        sink: &mut S,
        why: Flush,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, ConsumerError> {
        let durable = match self.call(sink, Call::Flush(why), stop).await? {
            Some(Outcome::Flushed(durable)) => durable,
            Some(Outcome::Refused(error)) => return Err(ConsumerError::RefusedFlush(error)),
            _ => return Ok(false),
        };
        if !durable.is_empty() {
            // Before shutdown the commit must reach the group before the consumer closes.
            let mode = match why {
                Flush::Idle => CommitMode::Async,
                Flush::Shutdown => CommitMode::Sync,
            };
            self.commit(&durable, mode);
        }
        Ok(true)
    }

    /// Commits the group's offsets (the sink already holds what they cover), timed as the
    /// `commit` stage.
    fn commit(&self, next: &Offsets, mode: CommitMode) {
        let started = std::time::Instant::now();
        self.source.commit(next, mode);
        self.metrics.commit.observe(started.elapsed().as_secs_f64());
    }

    fn count(&self, batch: &Batch) {
        self.metrics.events.inc_by(batch.records.len() as u64);
        let now = chrono::Utc::now().timestamp_millis();
        for record in &batch.records {
            if let Some(appended) = record.timestamp_ms {
                let age = (now - appended).max(0) as f64 / 1000.0;
                self.metrics.event_age.observe(age);
            }
        }
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
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<Outcome>, ConsumerError> {
        let mut delays = Delays::new(retry::forever(
            Duration::from_millis(100),
            Duration::from_secs(10),
        ));
        let mut paused = false;
        let outcome = loop {
            let started = Instant::now();
            let result = match call {
                Call::Write(batch) => sink.write(batch).await.map(Outcome::Written),
                Call::Flush(why) => sink.flush(why).await.map(Outcome::Flushed),
                Call::ListParked => sink.parked().await.map(Outcome::Parked),
                Call::Unpark(product, records) => sink
                    .unpark(product, records)
                    .await
                    .map(|()| Outcome::Unparked),
            };
            match result {
                Ok(outcome) => {
                    self.metrics
                        .batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    break outcome;
                }
                Err(SinkError::Fatal(error)) => return Err(ConsumerError::Sink(error)),
                // Only a sink that keeps parked records may refuse a record: else nothing
                // would keep it, and stopping is the only way to lose nothing.
                Err(SinkError::Data(error)) if sink.parks() => break Outcome::Refused(error),
                Err(SinkError::Data(error)) => {
                    return Err(ConsumerError::RefusedWithoutParking(error))
                }
                Err(SinkError::Transient(error)) => {
                    tracing::warn!(%error, "sink unavailable; partitions paused, retrying");
                    self.healthy.store(false, Ordering::Release);
                    self.metrics.sink_retries.inc();
                    if !paused {
                        self.source.pause()?;
                        paused = true;
                    }
                    if delays.sleep_or_stop(stop).await {
                        return Ok(None);
                    }
                }
            }
        };
        if paused {
            self.source.resume()?;
            self.healthy.store(true, Ordering::Release);
            tracing::info!("sink available again; partitions resumed");
        }
        Ok(Some(outcome))
    }
}

#[derive(Clone, Copy)]
enum Call<'a> {
    Write(&'a Batch),
    Flush(Flush),
    ListParked,
    Unpark(&'a str, Option<&'a [Record]>),
}

enum Outcome {
    Written(Written),
    Flushed(Offsets),
    Parked(Vec<Parked>),
    Unparked,
    /// The sink refused the data (a parking sink only).
    Refused(BoxError),
}

/// How writing one batch ended.
enum Step {
    Written,
    Reseeked,
    Refused(BoxError),
    Stopped,
}

mod dead_letters;
mod parked;

use parked::next_request;

#[cfg(test)]
mod tests;
