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
use foldline_schemas::wire::CodecError;
use foldline_schemas::{limits, Envelope};
use futures::future::BoxFuture;
use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

use crate::answer::Answer;
use crate::domain::{check_limits, decide, evolve, Actor, Command, DomainError, Product};
use crate::log::{AppendError, AppendFailed, LaneLog, Trace};
use crate::metrics::Metrics;
use crate::partitioning::{Home, PartitionPolicy};
use crate::store::Store;

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
    /// The log holds an event of the product that this build cannot read (written by a
    /// newer schema): its state here is incomplete.
    #[error("product {product} has an event written by a newer schema: {reason}")]
    NewerSchema { product: String, reason: String },
    /// The batch names products of partitions that no single transaction covers.
    #[error("the commands touch products of partitions {0:?}, which are written separately")]
    SpansPartitions(Vec<i32>),
}

impl From<AppendFailed> for WriteError {
    fn from(failed: AppendFailed) -> Self {
        match failed {
            AppendFailed::Append(error) => WriteError::Append(error),
            AppendFailed::Codec(error) => WriteError::Codec(error),
        }
    }
}

/// Where requests go: the lanes this instance serves (`ownership::Lanes`), or in a unit test
/// a scripted log.
pub trait Routes: Send + Sync + 'static {
    fn policy(&self) -> PartitionPolicy;
    /// The lane of `partition`, held for the request (it cannot be given up meanwhile), or
    /// where it is written instead.
    fn route(&self, partition: i32) -> BoxFuture<'_, Route>;
    /// A partition for a request that only creates and has no Idempotency-Key: one served
    /// here, or any when none is (then forwarded).
    fn partition_for_new(&self) -> i32;
}

/// Where a request for a partition goes.
pub enum Route {
    Here(HeldLane),
    /// Another instance owns it (its base URL when known), or nobody does right now.
    Elsewhere {
        owner: Option<String>,
    },
}

/// A request's hold on the lane of its partition.
pub struct HeldLane {
    pub log: Arc<dyn LaneLog>,
    _hold: Box<dyn Send + Sync>,
}

impl HeldLane {
    /// The lane's `log`, held until this is dropped by whatever `hold` is (a read guard on
    /// the lane's serving flag).
    pub fn new(log: Arc<dyn LaneLog>, hold: impl Send + Sync + 'static) -> HeldLane {
        HeldLane {
            log,
            _hold: Box::new(hold),
        }
    }
}

pub struct CommandHandler {
    pub store: Arc<Store>,
    pub routes: Arc<dyn Routes>,
    pub metrics: Metrics,
    pub low_stock_threshold: i64,
}

impl CommandHandler {
    pub fn new(
        store: Arc<Store>,
        routes: Arc<dyn Routes>,
        metrics: Metrics,
        low_stock_threshold: i64,
    ) -> Self {
        CommandHandler {
            store,
            routes,
            metrics,
            low_stock_threshold,
        }
    }

    /// The request's home partition (see the module's docs); assigns the new products' ids.
    fn home_partition(
        &self,
        commands: &mut [PlannedCommand],
        meta: &RequestMeta,
    ) -> Result<i32, WriteError> {
        let named: Vec<&str> = commands
            .iter()
            .filter_map(|c| c.product_id.as_deref())
            .collect();
        let creates = commands.len() - named.len();
        let routes = &self.routes;
        let (home, ids) =
            self.routes
                .policy()
                .home(&named, creates, meta.idempotency_key.as_deref(), || {
                    routes.partition_for_new()
                });
        let mut ids = ids.into_iter();
        for planned in commands.iter_mut() {
            if planned.product_id.is_none() {
                planned.product_id = ids.next();
            }
        }
        match home {
            Home::Partition(partition) => Ok(partition),
            Home::Spans(partitions) => Err(WriteError::SpansPartitions(partitions)),
        }
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
        let lane = match self.routes.route(partition).await {
            Route::Here(lane) => lane,
            Route::Elsewhere { owner } => return Err(WriteError::Elsewhere { partition, owner }),
        };
        lane.log.status()?;
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
        let result = self.execute_locked(&*lane.log, commands, &meta).await;
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
        log: &dyn LaneLog,
        commands: Vec<PlannedCommand>,
        meta: &RequestMeta,
    ) -> Result<Vec<Answer>, WriteError> {
        // Lock every product the request touches, in sorted order so requests never deadlock.
        let ids: BTreeSet<String> = commands
            .iter()
            .filter_map(|c| c.product_id.clone())
            .collect();
        let mut guards: HashMap<String, OwnedMutexGuard<Option<Product>>> = HashMap::new();
        for id in &ids {
            if let Some(reason) = self.store.unreadable(id) {
                return Err(WriteError::NewerSchema {
                    product: id.clone(),
                    reason,
                });
            }
        }
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
            .decide_and_append(log, &commands, meta, &mut guards)
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
        log: &dyn LaneLog,
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
        // The events in append order, and the command each belongs to.
        let mut events: Vec<Envelope> = Vec::new();
        let mut command_of: Vec<usize> = Vec::new();
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
                events.push(envelope);
                command_of.push(index);
            }
            scratch.insert(id, state);
        }
        let trace = Trace {
            correlation_id: meta.correlation_id.clone(),
            traceparent: meta.traceparent.clone(),
        };
        let positions = log.append(&events, &trace).await?;
        self.store.note_events(
            positions
                .iter()
                .zip(&events)
                .map(|(position, event)| (*position, event.event_id)),
        );
        // Committed: publish the new states and build the answers.
        for (id, guard) in guards.iter_mut() {
            if let Some(state) = scratch.remove(id) {
                **guard = state;
            }
        }
        let mut answers: Vec<Option<Answer>> = vec![None; commands.len()];
        for ((index, event), position) in command_of.iter().zip(&events).zip(positions) {
            answers[*index] = Some(Answer {
                id: event.product_id.clone(),
                version: event.version,
                position: position.to_string(),
            });
        }
        Ok(answers
            .into_iter()
            .map(|a| a.expect("every command appends"))
            .collect())
    }
}

#[cfg(test)]
mod tests;
