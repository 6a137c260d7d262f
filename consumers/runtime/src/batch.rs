use std::collections::BTreeMap;

use foldline_schemas::Envelope;
use foldline_service::position::Offsets;

use crate::parking::Parked;

/// One decoded event and where it is in the log.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    /// Broker timestamp (ms) when the record was appended, if the broker set one.
    pub timestamp_ms: Option<i64>,
    pub event: Envelope,
}

impl Record {
    /// The record of `message`, decoded as `event`.
    pub fn from_message(message: &rdkafka::message::OwnedMessage, event: Envelope) -> Record {
        use rdkafka::Message;
        Record {
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            timestamp_ms: message.timestamp().to_millis(),
            event,
        }
    }
}

/// Records polled together, in log order within each partition.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub records: Vec<Record>,
    /// First and last offset consumed per partition, *including* records that went to the
    /// dead-letter topic, so offsets move past them.
    pub ranges: BTreeMap<i32, (i64, i64)>,
    /// Records of parked products, set aside instead of applied (see [`crate::parking`]): a
    /// sink that parks keeps these entries durably with the batch's data and offsets.
    pub parked: Vec<Parked>,
    /// Bytes of the raw values.
    pub bytes: usize,
    /// Per partition, the offset the consumer was known to read on from without a break (the
    /// previous batch's next offset, or where it was told to seek). Offsets between it and the
    /// batch's first record hold no data (transaction markers), so a sink that stored exactly
    /// this offset can accept the batch although its first offset is higher.
    pub read_from: Offsets,
    /// The consumer group's rebalance generation the batch was read in. After a rebalance
    /// every partition is read again from the group's committed offsets, so a sink that holds
    /// records back drops them when this changes.
    pub generation: u64,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Notes that `offset` of `partition` was consumed (decoded or dead-lettered).
    pub fn consumed(&mut self, partition: i32, offset: i64, bytes: usize) {
        self.bytes += bytes;
        self.ranges
            .entry(partition)
            .and_modify(|(_, last)| *last = offset)
            .or_insert((offset, offset));
    }

    /// The offsets to resume from once the batch is durable: last + 1 per partition.
    pub fn next_offsets(&self) -> Offsets {
        self.ranges
            .iter()
            .map(|(p, (_, last))| (*p, last + 1))
            .collect()
    }

    /// Where each partition of the batch is read again from if nothing of it was written:
    /// where the batch was read on from, else its first record.
    pub fn start_offsets(&self) -> Offsets {
        self.ranges
            .iter()
            .map(|(p, (first, _))| (*p, self.read_from.get(*p).unwrap_or(*first)))
            .collect()
    }

    /// Whether a sink that stored `stored` as the next offset of `partition` holds everything
    /// before this batch's records of that partition (no data would be skipped).
    pub fn continues_from(&self, partition: i32, stored: i64) -> bool {
        match self.ranges.get(&partition) {
            None => true,
            Some((first, _)) => self.read_from.continues_from(partition, *first, stored),
        }
    }
}

impl Batch {
    /// The batch cut into one batch per record, in order, each continuing where the one before
    /// it in the same partition ends (offsets of dead-lettered records included), and a last
    /// piece per partition for the consumed offsets after its last record. Written one after
    /// the other they do what the whole batch does; a sink's refusal then names one record.
    pub fn split(&self) -> Vec<Batch> {
        let mut next: BTreeMap<i32, i64> = self
            .ranges
            .iter()
            .map(|(p, (first, _))| (*p, *first))
            .collect();
        let mut read_from = self.read_from.clone();
        let piece = |partition: i32, first: i64, last: i64, read_from: &Offsets| {
            let mut piece = Batch {
                generation: self.generation,
                ..Batch::default()
            };
            piece.ranges.insert(partition, (first, last));
            if let Some(from) = read_from.get(partition) {
                piece.read_from.set(partition, from);
            }
            piece
        };
        let mut pieces = Vec::with_capacity(self.records.len() + self.ranges.len());
        for record in &self.records {
            let p = record.partition;
            let mut one = piece(p, next[&p], record.offset, &read_from);
            one.records.push(record.clone());
            pieces.push(one);
            next.insert(p, record.offset + 1);
            read_from.set(p, record.offset + 1);
        }
        for (p, (_, last)) in &self.ranges {
            if next[p] <= *last {
                pieces.push(piece(*p, next[p], *last, &read_from));
            }
        }
        // Records parked as they were read (written by a newer schema) go with the piece that
        // covers their offset, so they are kept exactly when that offset is.
        for entry in &self.parked {
            let covers = |b: &&mut Batch| {
                b.ranges
                    .get(&entry.partition)
                    .is_some_and(|(first, last)| (*first..=*last).contains(&entry.offset))
            };
            if let Some(piece) = pieces.iter_mut().find(covers) {
                piece.parked.push(entry.clone());
            }
        }
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_consumed_offset_and_next_offsets_follow_them() {
        let mut batch = Batch::default();
        batch.consumed(0, 10, 5);
        batch.consumed(1, 3, 5);
        batch.consumed(0, 11, 5);
        assert_eq!(batch.ranges[&0], (10, 11));
        assert_eq!(batch.next_offsets(), Offsets::from([(0, 12), (1, 4)]));
        assert_eq!(batch.bytes, 15);
    }

    #[test]
    fn split_pieces_cover_the_batch_and_each_continues_the_one_before() {
        use foldline_schemas::event::ProductDeleted;
        let event = |id: &str| Envelope {
            event_id: Default::default(),
            product_id: id.into(),
            version: 1,
            occurred_at: Default::default(),
            correlation_id: "c".into(),
            idempotency_key: None,
            command_index: None,
            payload: foldline_schemas::Payload::ProductDeleted(ProductDeleted {}),
            actor: None,
        };
        let mut batch = Batch::default();
        batch.read_from.set(0, 9);
        // Partition 0: 10 decoded, 11 dead-lettered, 12 decoded, 13 dead-lettered.
        for (p, o, decoded) in [
            (0, 10, true),
            (1, 5, true),
            (0, 11, false),
            (0, 12, true),
            (0, 13, false),
        ] {
            batch.consumed(p, o, 1);
            if decoded {
                batch.records.push(Record {
                    partition: p,
                    offset: o,
                    key: None,
                    timestamp_ms: None,
                    event: event("x"),
                });
            }
        }
        // Offset 11 parked as it was read (written by a newer schema), not dead-lettered.
        batch.parked.push(Parked {
            partition: 0,
            offset: 11,
            product_id: "y".into(),
            version: 1,
            event_type: "FutureEvent".into(),
            reason: "written by a newer schema".into(),
        });
        let pieces = batch.split();
        let ranges: Vec<_> = pieces.iter().map(|b| b.ranges.clone()).collect();
        assert_eq!(
            ranges,
            vec![
                BTreeMap::from([(0, (10, 10))]),
                BTreeMap::from([(1, (5, 5))]),
                BTreeMap::from([(0, (11, 12))]),
                BTreeMap::from([(0, (13, 13))]),
            ]
        );
        assert_eq!(pieces[0].read_from.get(0), Some(9));
        assert!(pieces[1].read_from.get(1).is_none());
        assert_eq!(pieces[2].read_from.get(0), Some(11));
        assert!(pieces[2].continues_from(0, 11));
        assert_eq!(pieces[3].read_from.get(0), Some(13));
        assert_eq!(pieces.iter().map(|b| b.records.len()).sum::<usize>(), 3);
        let parked: Vec<usize> = pieces.iter().map(|b| b.parked.len()).collect();
        assert_eq!(
            parked,
            [0, 0, 1, 0],
            "kept with the piece that covers its offset"
        );
    }

    #[test]
    fn a_batch_continues_a_stored_offset_only_without_unseen_data_between() {
        let mut batch = Batch::default();
        batch.consumed(0, 12, 1);
        assert!(batch.continues_from(0, 12));
        assert!(
            batch.continues_from(0, 20),
            "already stored: the sink skips the records"
        );
        assert!(!batch.continues_from(0, 11), "offset 11 was never read");
        // Read on from 11 without a break: offset 11 was a transaction marker.
        batch.read_from.set(0, 11);
        assert!(batch.continues_from(0, 11));
        assert!(!batch.continues_from(0, 10));
    }
}
