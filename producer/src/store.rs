//! The producer's in-memory state: every product folded from the log, and the answers to
//! idempotency keys (rebuilt from the `idempotency_key`/`command_index` of logged events).
//!
//! Each product has its own async lock, held from decision until the append is committed, so
//! commands on one product are serialized while different products proceed concurrently.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use foldline_schemas::Envelope;
use serde::Serialize;
use tokio::sync::Mutex as AsyncMutex;

use crate::domain::{evolve, Product};
use crate::writer::Position;

pub type ProductSlot = Arc<AsyncMutex<Option<Product>>>;
/// Answers of an idempotency key by command index (0 for single commands).
pub type AnswerSlot = Arc<AsyncMutex<Option<BTreeMap<i64, Answer>>>>;

/// What a successful command answers: the product, its version and the position of the last
/// event the command appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Answer {
    pub id: String,
    pub version: i64,
    pub position: String,
}

/// How long an idempotency key is remembered unless configured otherwise.
pub const DEFAULT_IDEMPOTENCY_TTL_MS: i64 = 24 * 60 * 60 * 1000;

pub struct Store {
    products: Mutex<HashMap<String, ProductSlot>>,
    answers: Mutex<HashMap<String, AnswerSlot>>,
    /// When each key got its answer (epoch ms), oldest first, so expiry is a pop from the front.
    answer_ages: Mutex<VecDeque<(i64, String)>>,
    idempotency_ttl_ms: i64,
    next_offsets: Mutex<HashMap<i32, i64>>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new(DEFAULT_IDEMPOTENCY_TTL_MS)
    }
}

impl Store {
    /// A store that remembers idempotency keys for `idempotency_ttl_ms` after their answer.
    pub fn new(idempotency_ttl_ms: i64) -> Store {
        Store {
            products: Mutex::default(),
            answers: Mutex::default(),
            answer_ages: Mutex::default(),
            idempotency_ttl_ms,
            next_offsets: Mutex::default(),
        }
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
        let mut next = self.next_offsets.lock().expect("not poisoned");
        for p in positions {
            let entry = next.entry(p.partition).or_insert(0);
            *entry = (*entry).max(p.offset + 1);
        }
    }

    pub fn next_offsets(&self) -> HashMap<i32, i64> {
        self.next_offsets.lock().expect("not poisoned").clone()
    }

    pub fn product_count(&self) -> usize {
        self.products.lock().expect("not poisoned").len()
    }

    /// Folds one event read from the log. Events the state already holds (version not
    /// newer) are ignored, so re-reading a stretch of the log is harmless.
    pub async fn apply_logged(&self, event: &Envelope, position: Position) {
        self.note_positions(&[position]);
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
}
