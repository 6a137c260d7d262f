//! The producer's in-memory state: every product folded from the log, and the answers to
//! idempotency keys (rebuilt from the `idempotency_key`/`command_index` of logged events).
//!
//! Each product has its own async lock, held from decision until the append is committed, so
//! commands on one product are serialized while different products proceed concurrently.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use foldline_schemas::Envelope;
use tokio::sync::Mutex as AsyncMutex;
use uuid::Uuid;

pub use crate::answer::Answer;
use crate::domain::{evolve, Product};
use crate::partitioning::PartitionPolicy;
use crate::snapshot::{RememberedAnswers, Snapshot};
use crate::writer::Position;
use foldline_service::position::Offsets;

pub type ProductSlot = Arc<AsyncMutex<Option<Product>>>;
/// Answers of an idempotency key by command index (0 for single commands).
pub type AnswerSlot = Arc<AsyncMutex<Option<BTreeMap<i64, Answer>>>>;

/// How long an idempotency key is remembered unless configured otherwise.
pub const DEFAULT_IDEMPOTENCY_TTL_MS: i64 = 24 * 60 * 60 * 1000;

pub struct Store {
    products: Mutex<HashMap<String, ProductSlot>>,
    answers: Mutex<HashMap<String, AnswerSlot>>,
    /// When each key got its answer (epoch ms), oldest first, so expiry is a pop from the front.
    answer_ages: Mutex<VecDeque<(i64, String)>>,
    idempotency_ttl_ms: i64,
    covered: Mutex<Covered>,
    /// Products with an event in the log this build cannot read (written by a newer schema),
    /// and why: their state here is incomplete, so they take no commands.
    unreadable: Mutex<HashMap<String, String>>,
}

/// How far into the log the state goes: the next offset of every partition, and one event
/// the state holds per partition (its offset and id) so a snapshot can be checked against
/// the log it claims to cover.
#[derive(Default)]
struct Covered {
    next_offsets: Offsets,
    known_events: HashMap<i32, (i64, Uuid)>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new(DEFAULT_IDEMPOTENCY_TTL_MS)
    }
}

/// Idempotency keys belong to the token subject that sent them: the same key from another
/// subject is another key (a seller reusing an admin's key gets its own answer, never the
/// admin's). Subjects hold no control characters (`limits::check_actor`), so the unit
/// separator cannot be forged.
pub fn scoped_key(subject: &str, key: &str) -> String {
    format!("{subject}\u{1f}{key}")
}

impl Store {
    /// A store that remembers idempotency keys for `idempotency_ttl_ms` after their answer.
    pub fn new(idempotency_ttl_ms: i64) -> Store {
        Store {
            products: Mutex::default(),
            answers: Mutex::default(),
            answer_ages: Mutex::default(),
            idempotency_ttl_ms,
            covered: Mutex::default(),
            unreadable: Mutex::default(),
        }
    }

    /// Notes that the log holds an event of `product` this build cannot read.
    pub fn mark_unreadable(&self, product: &str, reason: &str) {
        self.unreadable
            .lock()
            .expect("not poisoned")
            .insert(product.to_owned(), reason.to_owned());
    }

    /// Why `product` takes no commands here, if it has an event this build cannot read.
    pub fn unreadable(&self, product: &str) -> Option<String> {
        self.unreadable
            .lock()
            .expect("not poisoned")
            .get(product)
            .cloned()
    }

    pub fn product(&self, id: &str) -> Option<ProductSlot> {
        self.products.lock().expect("not poisoned").get(id).cloned()
    }

    /// The slot of `id`, created empty if the product is new.
    pub fn product_or_new(&self, id: &str) -> ProductSlot {
        self.products
            .lock()
            .expect("not poisoned")
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    /// Forgets `slot` of `id` if it is still the slot there: a create that was refused or
    /// failed leaves nothing behind. The caller holds the slot's lock and saw it empty, so no
    /// product is lost: whoever else holds the slot finds it empty too (404).
    pub fn forget_empty_product(&self, id: &str, slot: &ProductSlot) {
        let mut products = self.products.lock().expect("not poisoned");
        if products.get(id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            products.remove(id);
        }
    }

    pub fn answer_slot(&self, key: &str) -> AnswerSlot {
        self.answers
            .lock()
            .expect("not poisoned")
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    /// Notes that `key` got its answer at `at_ms` and forgets keys older than the TTL, so the
    /// memory the keys take stays bounded by the write rate times the TTL.
    pub fn remember_answer(&self, key: &str, at_ms: i64) {
        let mut ages = self.answer_ages.lock().expect("not poisoned");
        ages.push_back((at_ms, key.to_owned()));
        let horizon = chrono::Utc::now().timestamp_millis() - self.idempotency_ttl_ms;
        let mut answers = self.answers.lock().expect("not poisoned");
        while ages.front().is_some_and(|(at, _)| *at < horizon) {
            let (_, old) = ages.pop_front().expect("front exists");
            // A slot a request holds right now is left alone (only the map holds an idle one).
            if answers
                .get(&old)
                .is_some_and(|slot| Arc::strong_count(slot) == 1)
            {
                answers.remove(&old);
            }
        }
    }

    /// Drops the slot of a key whose command failed, so failed keys take no memory.
    pub fn forget_unanswered(&self, key: &str) {
        let mut answers = self.answers.lock().expect("not poisoned");
        // Only when no other request waits on the same key (it would otherwise run its command
        // in a slot nobody else can see).
        if answers.get(key).is_some_and(|slot| {
            Arc::strong_count(slot) == 1 && slot.try_lock().is_ok_and(|answer| answer.is_none())
        }) {
            answers.remove(key);
        }
    }

    pub fn is_remembered(&self, key: &str) -> bool {
        self.answers.lock().expect("not poisoned").contains_key(key)
    }

    pub fn note_positions(&self, positions: &[Position]) {
        let mut covered = self.covered.lock().expect("not poisoned");
        for p in positions {
            covered.next_offsets.advance(p.partition, p.offset);
        }
    }

    /// Notes appended or read events, with their ids (see [`Covered`]).
    pub fn note_events(&self, events: impl IntoIterator<Item = (Position, Uuid)>) {
        let mut covered = self.covered.lock().expect("not poisoned");
        for (p, event_id) in events {
            covered.next_offsets.advance(p.partition, p.offset);
            let known = covered
                .known_events
                .entry(p.partition)
                .or_insert((p.offset, event_id));
            if p.offset > known.0 {
                *known = (p.offset, event_id);
            }
        }
    }

    pub fn next_offsets(&self) -> Offsets {
        self.covered
            .lock()
            .expect("not poisoned")
            .next_offsets
            .clone()
    }

    pub fn product_count(&self) -> usize {
        self.products.lock().expect("not poisoned").len()
    }

    /// Folds one event read from the log. Events the state already holds (version not
    /// newer) are ignored, so re-reading a stretch of the log is harmless.
    pub async fn apply_logged(&self, event: &Envelope, position: Position) {
        self.note_events([(position, event.event_id)]);
        let slot = self.product_or_new(&event.product_id);
        {
            let mut product = slot.lock().await;
            let current = product.as_ref().map_or(0, |p| p.version);
            if event.version <= current {
                return;
            }
            *product = evolve(product.take(), event);
        }
        if let (Some(key), Some(index)) = (&event.idempotency_key, event.command_index) {
            let key = &scoped_key(event.actor.as_deref().unwrap_or_default(), key);
            let age_ms =
                chrono::Utc::now().timestamp_millis() - event.occurred_at.timestamp_millis();
            if age_ms > self.idempotency_ttl_ms {
                return;
            }
            if !self.is_remembered(key) {
                self.remember_answer(key, event.occurred_at.timestamp_millis());
            }
            let slot = self.answer_slot(key);
            let mut answers = slot.lock().await;
            let by_index = answers.get_or_insert_with(BTreeMap::new);
            let newer = by_index
                .get(&index)
                .is_none_or(|existing| existing.version < event.version);
            if newer {
                by_index.insert(
                    index,
                    Answer {
                        id: event.product_id.clone(),
                        version: event.version,
                        position: position.to_string(),
                    },
                );
            }
        }
    }
}

impl Store {
    /// The state as a [`Snapshot`] of `topic`, without stopping writes. The log positions are
    /// taken first, then each product and answer under its own lock: a command notes its
    /// positions while it holds its products' and its key's locks, so every state read
    /// afterwards holds at least what the positions cover. A state that holds more is
    /// harmless: replaying the tail skips events a product already has (see `apply_logged`).
    ///
    /// With a `scope` (a partition, see [`PartitionPolicy::snapshot_scope`]), only what
    /// belongs to it: its products, the keys whose answers are there, its offset.
    pub async fn snapshot(
        &self,
        topic: &str,
        policy: &PartitionPolicy,
        scope: Option<i32>,
    ) -> Snapshot {
        let in_scope = |p: i32| scope.is_none_or(|partition| partition == p);
        let (next_offsets, known_events) = {
            let covered = self.covered.lock().expect("not poisoned");
            (
                covered
                    .next_offsets
                    .iter()
                    .filter(|(p, _)| in_scope(*p))
                    .collect(),
                covered
                    .known_events
                    .iter()
                    .filter(|(p, _)| in_scope(**p))
                    .map(|(p, e)| (*p, *e))
                    .collect(),
            )
        };
        let slots: Vec<ProductSlot> = self
            .products
            .lock()
            .expect("not poisoned")
            .values()
            .cloned()
            .collect();
        let mut products = Vec::with_capacity(slots.len());
        for (n, slot) in slots.into_iter().enumerate() {
            yield_every_1024(n).await;
            if let Some(product) = slot.lock().await.clone() {
                if policy.in_scope(scope, &product.id) {
                    products.push(product);
                }
            }
        }
        let answered_at: HashMap<String, i64> = self
            .answer_ages
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(at, key)| (key.clone(), *at))
            .collect();
        let slots: Vec<(String, AnswerSlot)> = self
            .answers
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(key, slot)| (key.clone(), slot.clone()))
            .collect();
        let now = chrono::Utc::now().timestamp_millis();
        let mut answers = Vec::with_capacity(slots.len());
        for (n, (key, slot)) in slots.into_iter().enumerate() {
            yield_every_1024(n).await;
            if let Some(by_index) = slot.lock().await.clone() {
                // A request's commands all go to one partition (see `ownership`).
                let here = by_index.values().next().is_none_or(|a| {
                    a.position
                        .parse::<Position>()
                        .is_ok_and(|position| in_scope(position.partition))
                });
                if !here {
                    continue;
                }
                let answered_at_ms = answered_at.get(&key).copied().unwrap_or(now);
                answers.push(RememberedAnswers {
                    key,
                    answered_at_ms,
                    by_index,
                });
            }
        }
        Snapshot::new(topic, next_offsets, known_events, products, answers)
    }

    /// Whether the log positions of `offsets` go further than the state here, in some
    /// partition (then a snapshot taken there is worth loading).
    pub fn is_behind(&self, offsets: &Offsets) -> bool {
        let covered = self.covered.lock().expect("not poisoned");
        offsets
            .iter()
            .any(|(p, o)| covered.next_offsets.get(p).unwrap_or(0) < o)
    }

    /// Loads a snapshot that goes further into the log than the state here (at start-up, or
    /// when taking over a partition whose state here is older): its products replace older
    /// states, its keys are added (those older than the TTL left out), its offsets advance
    /// the store's. The caller holds no product of the snapshot's partitions.
    pub fn restore(&self, snapshot: Snapshot) {
        let mut products = self.products.lock().expect("not poisoned");
        for product in snapshot.products {
            let newer = products.get(&product.id).is_none_or(|slot| {
                slot.try_lock()
                    .is_ok_and(|p| p.as_ref().is_none_or(|p| p.version < product.version))
            });
            if newer {
                products.insert(product.id.clone(), Arc::new(AsyncMutex::new(Some(product))));
            }
        }
        let horizon = chrono::Utc::now().timestamp_millis() - self.idempotency_ttl_ms;
        let mut remembered: Vec<RememberedAnswers> = snapshot
            .answers
            .into_iter()
            .filter(|a| a.answered_at_ms >= horizon)
            .collect();
        remembered.sort_by_key(|a| a.answered_at_ms);
        let mut answers = self.answers.lock().expect("not poisoned");
        let mut ages = self.answer_ages.lock().expect("not poisoned");
        for a in remembered {
            match answers.get(&a.key) {
                // An empty slot (a request of that key failed here, and a retry holds the
                // slot) is filled in place: a request waiting on it then finds the answer.
                Some(slot) => {
                    if let Ok(mut answer) = slot.try_lock() {
                        if answer.is_none() {
                            *answer = Some(a.by_index);
                            ages.push_back((a.answered_at_ms, a.key));
                        }
                    }
                }
                None => {
                    ages.push_back((a.answered_at_ms, a.key.clone()));
                    answers.insert(a.key, Arc::new(AsyncMutex::new(Some(a.by_index))));
                }
            }
        }
        let mut covered = self.covered.lock().expect("not poisoned");
        for (partition, offset) in snapshot.next_offsets.iter() {
            if covered.next_offsets.get(partition).unwrap_or(0) < offset {
                covered.next_offsets.set(partition, offset);
                if let Some(known) = snapshot.known_events.get(&partition) {
                    covered.known_events.insert(partition, *known);
                }
            }
        }
    }
}

/// Lets other tasks run every 1,024 items of a long copy: the locks a snapshot takes are
/// uncontended, so their awaits never yield, and copying a state of ~700,000 products would
/// hold a runtime thread (one of two on a 2-core machine) for a large part of a second.
async fn yield_every_1024(n: usize) {
    if n % 1024 == 1023 {
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Option<BTreeMap<i64, Answer>> {
        Some(BTreeMap::from([(
            0,
            Answer {
                id: "p".into(),
                version: 1,
                position: "0:0".into(),
            },
        )]))
    }

    #[tokio::test]
    async fn keys_older_than_the_ttl_are_forgotten_when_new_ones_arrive() {
        let store = Store::new(60_000);
        let now = chrono::Utc::now().timestamp_millis();
        // Recorded in time order, as answers are.
        *store.answer_slot("older").lock().await = answer();
        store.remember_answer("older", now - 120_000);
        *store.answer_slot("old").lock().await = answer();
        store.remember_answer("old", now - 59_000);
        *store.answer_slot("new").lock().await = answer();
        store.remember_answer("new", now);
        assert!(store.is_remembered("old"), "still within the TTL");
        assert!(!store.is_remembered("older"));
        assert!(store.is_remembered("new"));
    }

    #[tokio::test]
    async fn a_failed_key_takes_no_memory_unless_another_request_waits_on_it() {
        let store = Store::new(60_000);
        drop(store.answer_slot("failed"));
        store.forget_unanswered("failed");
        assert!(!store.is_remembered("failed"));

        let waiting = store.answer_slot("busy");
        store.forget_unanswered("busy");
        assert!(
            store.is_remembered("busy"),
            "a waiting request keeps the slot"
        );
        drop(waiting);
    }

    /// An event of product `id` at `version`, logged at `partition:offset` with key `key`.
    fn logged(id: &str, version: i64, key: Option<&str>) -> Envelope {
        use foldline_schemas::{Payload, ProductCreated, StockAdjusted};
        let payload = if version == 1 {
            Payload::ProductCreated(ProductCreated {
                name: id.into(),
                price_cents: 10,
                stock: 10,
                seller_id: "s".into(),
                low_stock_threshold: None,
            })
        } else {
            Payload::StockAdjusted(StockAdjusted {
                delta: 1,
                new_stock: 10 + version - 1,
                reason: None,
                previous_stock: 9,
            })
        };
        Envelope {
            event_id: Uuid::new_v4(),
            product_id: id.into(),
            version,
            occurred_at: chrono::Utc::now(),
            correlation_id: "c".into(),
            idempotency_key: key.map(str::to_owned),
            command_index: key.map(|_| 0),
            payload,
            actor: Some("root".into()),
        }
    }

    /// A store holding products of both partitions of a two-partition topic, one answered key
    /// in each.
    async fn filled(policy: &PartitionPolicy) -> (Store, String, String) {
        let store = Store::new(60_000);
        let (a, b) = loop {
            let (a, b) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
            if policy.partition_of(&a) == 0 && policy.partition_of(&b) == 1 {
                break (a, b);
            }
        };
        let mut offsets = [0_i64, 0];
        for (id, key) in [(&a, "ka"), (&b, "kb")] {
            let partition = policy.partition_of(id);
            for version in 1..=3 {
                let offset = offsets[partition as usize];
                offsets[partition as usize] += 1;
                let key = (version == 3).then_some(key);
                let position = Position { partition, offset };
                store
                    .apply_logged(&logged(id, version, key), position)
                    .await;
            }
        }
        (store, a, b)
    }

    async fn version_of(store: &Store, id: &str) -> Option<i64> {
        let slot = store.product(id)?;
        let product = slot.lock().await;
        product.as_ref().map(|p| p.version)
    }

    #[tokio::test]
    async fn a_snapshot_restored_into_an_empty_store_holds_the_same_state() {
        let policy = PartitionPolicy::new(crate::partitioning::Mode::Single, 2);
        let (store, a, b) = filled(&policy).await;
        let snapshot = store.snapshot("products", &policy, None).await;
        assert_eq!(snapshot.products.len(), 2);
        assert_eq!(snapshot.answers.len(), 2);
        let restored = Store::new(60_000);
        assert!(restored.is_behind(&snapshot.next_offsets));
        restored.restore(snapshot);
        assert_eq!(version_of(&restored, &a).await, Some(3));
        assert_eq!(version_of(&restored, &b).await, Some(3));
        assert!(restored.is_remembered(&scoped_key("root", "ka")));
        assert_eq!(restored.next_offsets(), store.next_offsets());
        assert!(!restored.is_behind(&store.next_offsets()));
    }

    #[tokio::test]
    async fn a_partitions_snapshot_holds_only_its_partition() {
        let policy = PartitionPolicy::new(crate::partitioning::Mode::Partitions, 2);
        let (store, a, b) = filled(&policy).await;
        let snapshot = store.snapshot("products", &policy, Some(1)).await;
        let ids: Vec<&str> = snapshot.products.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, vec![b.as_str()]);
        assert_eq!(snapshot.answers.len(), 1);
        assert_eq!(snapshot.answers[0].key, scoped_key("root", "kb"));
        assert_eq!(snapshot.next_offsets.get(0), None);
        assert_eq!(snapshot.next_offsets.get(1), Some(3));
        let restored = Store::new(60_000);
        restored.restore(snapshot);
        assert_eq!(version_of(&restored, &a).await, None);
        assert_eq!(version_of(&restored, &b).await, Some(3));
    }

    #[tokio::test]
    async fn a_snapshot_older_than_the_state_changes_nothing() {
        let policy = PartitionPolicy::new(crate::partitioning::Mode::Single, 2);
        let (store, a, _) = filled(&policy).await;
        let old = store.snapshot("products", &policy, None).await;
        let partition = policy.partition_of(&a);
        let offset = store.next_offsets().get(partition).unwrap();
        store
            .apply_logged(&logged(&a, 4, None), Position { partition, offset })
            .await;
        assert!(!store.is_behind(&old.next_offsets));
        store.restore(old);
        assert_eq!(
            version_of(&store, &a).await,
            Some(4),
            "the newer state stays"
        );
    }
}
