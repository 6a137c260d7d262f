//! The snapshot format, pure: what a snapshot of the producer's state holds, and its bytes
//! (zstd-compressed JSON). Building one from the state and loading one into it is the
//! store's (`Store::snapshot`, `Store::restore`); storing it in S3 and checking it against
//! the log is [`crate::snapshot_store`]'s.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use foldline_service::position::Offsets;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::answer::Answer;
use crate::domain::Product;

/// Bumped whenever the layout changes: a snapshot of another format is ignored.
pub const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not zstd: {0}")]
    Compression(std::io::Error),
    #[error("not a snapshot: {0}")]
    Json(#[from] serde_json::Error),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub format: u32,
    pub topic: String,
    pub taken_at: DateTime<Utc>,
    /// Every committed event before these offsets is in the snapshot.
    pub next_offsets: Offsets,
    /// Per partition, one event the snapshot holds: (offset, event id).
    pub known_events: BTreeMap<i32, (i64, Uuid)>,
    pub products: Vec<Product>,
    pub answers: Vec<RememberedAnswers>,
}

/// The answers of one Idempotency-Key, and when it got them (its TTL counts from then).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct RememberedAnswers {
    pub key: String,
    pub answered_at_ms: i64,
    pub by_index: BTreeMap<i64, Answer>,
}

impl Snapshot {
    pub fn new(
        topic: &str,
        next_offsets: Offsets,
        known_events: BTreeMap<i32, (i64, Uuid)>,
        products: Vec<Product>,
        answers: Vec<RememberedAnswers>,
    ) -> Snapshot {
        Snapshot {
            format: FORMAT,
            topic: topic.to_owned(),
            taken_at: Utc::now(),
            next_offsets,
            known_events,
            products,
            answers,
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
        let json = serde_json::to_vec(self)?;
        zstd::encode_all(json.as_slice(), 3).map_err(SnapshotError::Compression)
    }

    pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        let json = zstd::decode_all(bytes).map_err(SnapshotError::Compression)?;
        Ok(serde_json::from_slice(&json)?)
    }

    /// Whether this build can load the snapshot for `topic`: its format and topic match.
    /// (Whether it belongs to this log is checked against the log itself.)
    pub fn check_header(&self, topic: &str) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "format {} (this build reads {FORMAT})",
                self.format
            ));
        }
        if self.topic != topic {
            return Err(format!("taken of topic {}", self.topic));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{evolve, Product};
    use foldline_schemas::{Envelope, Payload, ProductCreated};

    fn product(id: &str) -> Product {
        let created = Envelope {
            event_id: Uuid::new_v4(),
            product_id: id.into(),
            version: 1,
            occurred_at: Utc::now(),
            correlation_id: "c".into(),
            idempotency_key: None,
            command_index: None,
            payload: Payload::ProductCreated(ProductCreated {
                name: format!("name of {id}"),
                price_cents: 100,
                stock: 3,
                seller_id: "s".into(),
                low_stock_threshold: None,
            }),
            actor: None,
        };
        evolve(None, &created).unwrap()
    }

    fn sample() -> Snapshot {
        let answers = vec![RememberedAnswers {
            key: "root\u{1f}k".into(),
            answered_at_ms: 1,
            by_index: BTreeMap::from([(
                0,
                Answer {
                    id: "a".into(),
                    version: 1,
                    position: "0:4".into(),
                },
            )]),
        }];
        Snapshot::new(
            "products",
            [(0, 5), (1, 2)].into_iter().collect(),
            BTreeMap::from([(0, (4, Uuid::new_v4()))]),
            vec![product("a"), product("b")],
            answers,
        )
    }

    #[test]
    fn a_snapshot_round_trips_through_its_bytes() {
        let snapshot = sample();
        let bytes = snapshot.encode().unwrap();
        assert_eq!(Snapshot::decode(&bytes).unwrap(), snapshot);
    }

    #[test]
    fn truncated_bytes_are_refused() {
        let bytes = sample().encode().unwrap();
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(Snapshot::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn tampered_bytes_are_refused_or_decode_to_something_checked() {
        // zstd frames carry no checksum by default: a flipped byte fails decompression, the
        // JSON or the types — or, rarely, yields another valid snapshot, which the check
        // against the log (one known event per partition) then refuses to trust.
        let bytes = sample().encode().unwrap();
        let mut refused = 0;
        for at in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[at] ^= 0x5a;
            if Snapshot::decode(&tampered).is_err() {
                refused += 1;
            }
        }
        assert!(
            refused * 2 > bytes.len(),
            "{refused} of {} refused",
            bytes.len()
        );
        let not_zstd = serde_json::to_vec(&sample()).unwrap();
        assert!(matches!(
            Snapshot::decode(&not_zstd),
            Err(SnapshotError::Compression(_))
        ));
        let zstd_not_json = zstd::encode_all(&b"{\"format\": 1"[..], 3).unwrap();
        assert!(matches!(
            Snapshot::decode(&zstd_not_json),
            Err(SnapshotError::Json(_))
        ));
    }

    #[test]
    fn another_format_or_topic_is_not_loaded() {
        let mut snapshot = sample();
        assert_eq!(snapshot.check_header("products"), Ok(()));
        assert!(snapshot.check_header("other").is_err());
        snapshot.format = FORMAT + 1;
        assert!(snapshot
            .check_header("products")
            .unwrap_err()
            .contains("format"));
    }
}
