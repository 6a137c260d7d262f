//! The producer's in-memory state: every product folded from the log, and the answers to
//! idempotency keys (rebuilt from the `idempotency_key`/`command_index` of logged events).
//!
//! Each product has its own async lock, held from decision until the append is committed, so
//! commands on one product are serialized while different products proceed concurrently.

use std::collections::{BTreeMap, HashMap};
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answer {
    pub id: String,
    pub version: i64,
    pub position: String,
}

#[derive(Default)]
pub struct Store {
    products: Mutex<HashMap<String, ProductSlot>>,
    answers: Mutex<HashMap<String, AnswerSlot>>,
    next_offsets: Mutex<HashMap<i32, i64>>,
}

impl Store {
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
