//! Audits a topic against what its writers were told: every acknowledged command is in the
//! log at the position it was answered with, no command was appended twice, and each
//! product's versions are exactly 1..n.

use std::collections::{BTreeMap, HashMap, HashSet};

use foldline_schemas::wire::EventCodec;
use foldline_schemas::Envelope;
use rdkafka::Message;

use crate::load::Ack;

#[derive(Debug, Clone)]
pub struct LoggedEvent {
    pub envelope: Envelope,
    pub partition: i32,
    pub offset: i64,
}

/// Every committed event of `topic`, decoded through the registry (waiting out an outage).
/// Panics on a record that does not decode: the producer never writes one.
pub async fn read_events(brokers: &str, registry_url: &str, topic: &str) -> Vec<LoggedEvent> {
    let codec = EventCodec::new(registry_url, topic).expect("registry settings");
    let mut events = Vec::new();
    for message in crate::read_all(brokers, topic).await {
        let envelope = codec
            .decode_waiting(message.payload().unwrap_or_default())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{}:{} does not decode: {e}",
                    message.partition(),
                    message.offset()
                )
            });
        events.push(LoggedEvent {
            envelope,
            partition: message.partition(),
            offset: message.offset(),
        });
    }
    events
}

/// What the audit found; `problems` empty means the log is exactly what the clients were told.
#[derive(Debug, Default)]
pub struct Audit {
    pub events: usize,
    pub products: usize,
    pub acknowledged: usize,
    /// Acknowledged commands not found at their answered position.
    pub lost: usize,
    /// Idempotency keys whose command appears more than once.
    pub doubled: usize,
    /// Products whose versions are not exactly 1..n.
    pub broken_versions: usize,
    /// Batches sent, and of those in the log only in part (some commands, not all).
    pub batches: usize,
    pub batches_in_log: usize,
    pub split: usize,
    pub problems: Vec<String>,
}

impl std::fmt::Display for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} events, {} products, {} acknowledged: {} lost, {} doubled, {} products with broken versions; {} atomic batches sent, {} in the log, {} split",
            self.events, self.products, self.acknowledged, self.lost, self.doubled, self.broken_versions,
            self.batches, self.batches_in_log, self.split
        )
    }
}

pub fn audit(events: &[LoggedEvent], acks: &[Ack]) -> Audit {
    let mut audit = Audit {
        events: events.len(),
        acknowledged: acks.len(),
        ..Audit::default()
    };
    let mut ordered: Vec<&LoggedEvent> = events.iter().collect();
    ordered.sort_by_key(|e| (e.partition, e.offset));

    // Versions 1..n per product, in log order.
    let mut versions: HashMap<&str, Vec<i64>> = HashMap::new();
    for event in &ordered {
        versions
            .entry(&event.envelope.product_id)
            .or_default()
            .push(event.envelope.version);
    }
    audit.products = versions.len();
    for (product, seen) in &versions {
        let expected: Vec<i64> = (1..=seen.len() as i64).collect();
        if *seen != expected {
            audit.broken_versions += 1;
            audit.problems.push(format!(
                "product {product}: versions {} (expected 1..{})",
                summarize(seen),
                seen.len()
            ));
        }
    }

    // A command (one Idempotency-Key) appended once: each of its events exactly once.
    let mut by_key: BTreeMap<&str, Vec<&LoggedEvent>> = BTreeMap::new();
    for event in &ordered {
        if let Some(key) = &event.envelope.idempotency_key {
            by_key.entry(key).or_default().push(event);
        }
    }
    for (key, events) in &by_key {
        let mut seen = HashSet::new();
        let doubled = events.iter().any(|e| {
            !seen.insert((
                e.envelope.command_index,
                e.envelope.product_id.as_str(),
                e.envelope.event_type(),
            ))
        });
        if doubled {
            audit.doubled += 1;
            let at: Vec<String> = events
                .iter()
                .map(|e| format!("{}:{} v{}", e.partition, e.offset, e.envelope.version))
                .collect();
            audit.problems.push(format!(
                "key {key} appended more than once: {}",
                at.join(", ")
            ));
        }
    }

    // Every acknowledged answer names an event of that command.
    let at: HashMap<(i32, i64), &LoggedEvent> = events
        .iter()
        .map(|e| ((e.partition, e.offset), e))
        .collect();
    for ack in acks {
        let found = position(&ack.position)
            .and_then(|p| at.get(&p))
            .filter(|e| {
                e.envelope.idempotency_key.as_deref() == Some(ack.idempotency_key.as_str())
                    && e.envelope.product_id == ack.product_id
                    && e.envelope.version == ack.version
            });
        if found.is_none() {
            audit.lost += 1;
            audit.problems.push(format!(
                "acknowledged {} (product {} v{} at {}) is not in the log there",
                ack.idempotency_key, ack.product_id, ack.version, ack.position
            ));
        }
    }
    audit
}

/// Each batch (Idempotency-Key, number of commands), acknowledged or not, is in the log whole
/// (every command index once; doubles are the key check of [`audit`]) or not at all.
pub fn audit_batches(audit: &mut Audit, events: &[LoggedEvent], batches: &[(String, usize)]) {
    let mut indexes: HashMap<&str, HashSet<i64>> = HashMap::new();
    for event in events {
        if let Some(key) = &event.envelope.idempotency_key {
            indexes
                .entry(key.as_str())
                .or_default()
                .insert(event.envelope.command_index.unwrap_or(0));
        }
    }
    audit.batches = batches.len();
    for (key, commands) in batches {
        let Some(found) = indexes.get(key.as_str()) else {
            continue;
        };
        audit.batches_in_log += 1;
        let whole = (0..*commands as i64).all(|i| found.contains(&i)) && found.len() == *commands;
        if !whole {
            audit.split += 1;
            let mut found: Vec<&i64> = found.iter().collect();
            found.sort();
            audit.problems.push(format!(
                "batch {key} of {commands} commands is in the log in part: command indexes {found:?}"
            ));
        }
    }
}

fn position(text: &str) -> Option<(i32, i64)> {
    let position: foldline_service::position::Position = text.parse().ok()?;
    Some((position.partition, position.offset))
}

/// `1..4, 4, 5..9`-style summary of a version list, to show where it breaks.
fn summarize(versions: &[i64]) -> String {
    let mut parts = Vec::new();
    let mut start = 0;
    for i in 1..=versions.len() {
        if i == versions.len() || versions[i] != versions[i - 1] + 1 {
            parts.push(if i - 1 == start {
                versions[start].to_string()
            } else {
                format!("{}..{}", versions[start], versions[i - 1])
            });
            start = i;
        }
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarize_shows_where_versions_repeat() {
        assert_eq!(summarize(&[1, 2, 3, 3, 4, 5]), "1..3, 3..5");
        assert_eq!(summarize(&[1, 3]), "1, 3");
    }
}
