//! Executes write requests: routing to the partition's lane, idempotency, per-product
//! locking, decision, encoding, append, and only then the in-memory fold. A request is one or
//! more commands (the batch endpoint); its events are appended atomically, so either all of
//! its commands happen or none.
//!
//! In `partitions` mode every request has a *home partition*: that of the products it names
//! (a batch naming products of partitions written by different lanes is refused: no
//! transaction spans them), or for a request that only creates, that of its Idempotency-Key
//! (so a retry lands where the first try did), or else one this instance serves. New products
//! get ids in the home partition. A request whose home is served by another instance is
//! answered [`WriteError::Elsewhere`], which the HTTP layer forwards. In `single` mode the one
//! lane writes every partition and ids are drawn freely.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::Utc;
use foldline_schemas::wire::{CodecError, EventCodec};
use foldline_schemas::{limits, Envelope};
use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

use crate::domain::{check_limits, decide, evolve, Actor, Command, DomainError, Product};
use crate::metrics::Metrics;
use crate::ownership::{Lanes, Mode, Route};
use crate::partitioning::{new_id_in, partition_of};
use crate::store::{Answer, Store};
use crate::writer::{AppendError, OutRecord, Writer};

/// One command of a request. `product_id` is `None` for a create (the id is assigned here).
#[derive(Debug, Clone)]
pub struct PlannedCommand {
    pub product_id: Option<String>,
    pub command: Command,
    pub expected_version: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// Who sends the request: authorized per command by `decide`; its subject goes into
    /// every event. Never optional, so no path can skip authorization.
    pub actor: Actor,
    pub idempotency_key: Option<String>,
    pub correlation_id: String,
    pub traceparent: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("command {index}: {error}")]
    Rejected { index: usize, error: DomainError },
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Another instance writes the request's partition (its URL when known).
    #[error("partition {partition} is written by another producer instance")]
    Elsewhere {
        partition: i32,
        owner: Option<String>,
    },
    /// The batch names products of partitions that no single transaction covers.
    #[error("the commands touch products of partitions {0:?}, which are written separately")]
    SpansPartitions(Vec<i32>),
}

pub struct CommandHandler {
    pub store: Arc<Store>,
    pub lanes: Arc<Lanes>,
    pub codec: Arc<EventCodec>,
    pub metrics: Metrics,
    pub low_stock_threshold: i64,
}

impl CommandHandler {
    pub fn new(
        lanes: Arc<Lanes>,
        codec: Arc<EventCodec>,
        metrics: Metrics,
        low_stock_threshold: i64,
    ) -> Self {
        CommandHandler {
            store: lanes.store().clone(),
            lanes,
            codec,
            metrics,
            low_stock_threshold,
        }
    }

    /// The request's home partition (see the module's docs); assigns the new products' ids.
    /// In `single` mode one lane writes every partition, so new ids are left free (a batch's
    /// creates spread over the partitions, as they always did).
    fn home_partition(
        &self,
        commands: &mut [PlannedCommand],
        meta: &RequestMeta,
    ) -> Result<i32, WriteError> {
        let count = self.lanes.partition_count;
        if self.lanes.mode == Mode::Single {
            for planned in commands.iter_mut() {
                planned
                    .product_id
                    .get_or_insert_with(|| Uuid::now_v7().to_string());
            }
            let first = commands.first().and_then(|c| c.product_id.as_deref());
            return Ok(first.map_or(0, |id| partition_of(id, count)));
        }
        let named: BTreeSet<i32> = commands
            .iter()
            .filter_map(|c| c.product_id.as_deref())
            .map(|id| partition_of(id, count))
            .collect();
        if !self.lanes.one_lane(&named) {
            return Err(WriteError::SpansPartitions(named.into_iter().collect()));
        }
        let home = match (named.first(), &meta.idempotency_key) {
            (Some(partition), _) => *partition,
            (None, Some(key)) => partition_of(key, count),
            (None, None) => self.lanes.partition_for_new(),
        };
        for planned in commands.iter_mut() {
            if planned.product_id.is_none() {
                planned.product_id = Some(new_id_in(home, count));
            }
        }
        Ok(home)
    }

    /// Runs the request and answers one [`Answer`] per command, in order. With an
    /// idempotency key that already succeeded, answers the first answers and appends nothing.
    ///
    /// The work runs in a task of its own, so it finishes even when the caller goes away: a
    /// closed connection (a client that gave up, a forwarding instance that died) or the
    /// request timeout drops the HTTP handler's future, and had that happened after the
    /// events were handed to the writer, they would be committed while the state, the
    /// versions and the key's answer here never learnt of it — the key's retry was then
    /// decided again and appended twice (seen in the chaos run with three producers).
    pub async fn execute(
        self: &Arc<Self>,
        commands: Vec<PlannedCommand>,
        meta: RequestMeta,
    ) -> Result<Vec<Answer>, WriteError> {
        let handler = self.clone();
        match tokio::spawn(async move { handler.execute_to_the_end(commands, meta).await }).await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(WriteError::Append(AppendError::Unavailable(
                "the producer is shutting down".into(),
            ))),
        }
    }

    async fn execute_to_the_end(
        self: &Arc<Self>,
        mut commands: Vec<PlannedCommand>,
        meta: RequestMeta,
    ) -> Result<Vec<Answer>, WriteError> {
        // Limits first: a command past one is refused before any state is looked at or made.
        for (index, planned) in commands.iter().enumerate() {
            check_limits(&planned.command)
                .map_err(|error| WriteError::Rejected { index, error })?;
            // An id that breaks the id limits names no product there can be.
            if let Some(id) = &planned.product_id {
                if limits::check_product_id(id).is_err() {
                    return Err(WriteError::Rejected {
                        index,
                        error: DomainError::NotFound,
                    });
                }
            }
        }
        let partition = self.home_partition(&mut commands, &meta)?;
        let lane = match self.lanes.route(partition).await {
            Route::Here(lane) => lane,
            Route::Elsewhere { owner } => return Err(WriteError::Elsewhere { partition, owner }),
        };
        let writer = &lane.lane.writer;
        writer.status()?;
        let scoped = meta
            .idempotency_key
            .as_deref()
            .map(|key| crate::store::scoped_key(&meta.actor.subject, key));
        let answer_guard = match &scoped {
            Some(key) => {
                let guard = self.store.answer_slot(key).lock_owned().await;
                if let Some(answers) = guard.as_ref() {
                    return Ok(answers.values().cloned().collect());
                }
                Some(guard)
            }
            None => None,
        };
        let result = self.execute_locked(writer, commands, &meta).await;
        if let (Ok(answers), Some(mut guard)) = (&result, answer_guard) {
            let by_index: BTreeMap<i64, Answer> = answers
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, a)| (i as i64, a))
                .collect();
            *guard = Some(by_index);
        }
        if let Some(key) = &scoped {
            match &result {
                Ok(_) => self
                    .store
                    .remember_answer(key, chrono::Utc::now().timestamp_millis()),
                Err(_) => self.store.forget_unanswered(key),
            }
        }
        result
    }

    async fn execute_locked(
        &self,
        writer: &Writer,
        commands: Vec<PlannedCommand>,
        meta: &RequestMeta,
    ) -> Result<Vec<Answer>, WriteError> {
        // Lock every product the request touches, in sorted order so requests never deadlock.
        let ids: BTreeSet<String> = commands
            .iter()
            .filter_map(|c| c.product_id.clone())
            .collect();
        let mut guards: HashMap<String, OwnedMutexGuard<Option<Product>>> = HashMap::new();
        for id in ids {
            let creates = commands.iter().any(|c| {
                c.product_id.as_deref() == Some(&id) && matches!(c.command, Command::Create { .. })
            });
            let slot = if creates {
                Some(self.store.product_or_new(&id))
            } else {
                self.store.product(&id)
            };
            if let Some(slot) = slot {
                guards.insert(id, slot.lock_owned().await);
            }
        }
        let result = self
            .decide_and_append(writer, &commands, meta, &mut guards)
            .await;
        if result.is_err() {
            // Slots made for creates that did not happen: nothing may stay behind.
            for (id, guard) in &guards {
                if guard.is_none() {
                    self.store
                        .forget_empty_product(id, OwnedMutexGuard::mutex(guard));
                }
            }
        }
        result
    }

    /// Decides every command on a scratch copy of the locked products, appends the events and
    /// only then publishes the new states into the slots.
    async fn decide_and_append(
        &self,
        writer: &Writer,
        commands: &[PlannedCommand],
        meta: &RequestMeta,
        guards: &mut HashMap<String, OwnedMutexGuard<Option<Product>>>,
    ) -> Result<Vec<Answer>, WriteError> {
        // Decide every command on a scratch copy; nothing is visible until the commit.
        let mut scratch: HashMap<String, Option<Product>> = guards
            .iter()
            .map(|(id, guard)| (id.clone(), (**guard).clone()))
            .collect();
        let now = Utc::now();
        let mut envelopes: Vec<(usize, Envelope)> = Vec::new();
        for (index, planned) in commands.iter().enumerate() {
            let id = planned.product_id.clone().expect("assigned above");
            let current = scratch.get(&id).cloned().flatten();
            let payloads = decide(
                &meta.actor,
                current.as_ref(),
                &planned.command,
                planned.expected_version,
                self.low_stock_threshold,
            )
            .map_err(|error| WriteError::Rejected { index, error })?;
            let mut state = current;
            for payload in payloads {
                let envelope = Envelope {
                    event_id: Uuid::new_v4(),
                    product_id: id.clone(),
                    version: state.as_ref().map_or(0, |p| p.version) + 1,
                    occurred_at: now,
                    correlation_id: meta.correlation_id.clone(),
                    idempotency_key: meta.idempotency_key.clone(),
                    command_index: Some(index as i64),
                    payload,
                    actor: Some(meta.actor.subject.clone()),
                };
                state = evolve(state, &envelope);
                envelopes.push((index, envelope));
            }
            scratch.insert(id, state);
        }
        let mut records = Vec::with_capacity(envelopes.len());
        for (_, envelope) in &envelopes {
            records.push(OutRecord {
                partition: partition_of(&envelope.product_id, self.lanes.partition_count),
                key: envelope.product_id.clone(),
                value: self.codec.encode(envelope).await?,
                headers: vec![
                    ("event-type", envelope.event_type().as_str().to_owned()),
                    ("correlation-id", meta.correlation_id.clone()),
                    ("traceparent", meta.traceparent.clone()),
                ],
            });
        }
        let positions = writer.append(records).await?;
        self.store.note_events(
            positions
                .iter()
                .zip(&envelopes)
                .map(|(position, (_, envelope))| (*position, envelope.event_id)),
        );
        // Committed: publish the new states and build the answers.
        for (id, guard) in guards.iter_mut() {
            if let Some(state) = scratch.remove(id) {
                **guard = state;
            }
        }
        let mut answers: Vec<Option<Answer>> = vec![None; commands.len()];
        for ((index, envelope), position) in envelopes.iter().zip(positions) {
            answers[*index] = Some(Answer {
                id: envelope.product_id.clone(),
                version: envelope.version,
                position: position.to_string(),
            });
        }
        Ok(answers
            .into_iter()
            .map(|a| a.expect("every command appends"))
            .collect())
    }
}
