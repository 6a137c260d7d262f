use std::collections::BTreeMap;

use foldline_schemas::Envelope;
use foldline_service::position::Offsets;

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

/// Records polled together, in log order within each partition.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub records: Vec<Record>,
    /// First and last offset consumed per partition, *including* records that went to the
    /// dead-letter topic, so offsets move past them.
    pub ranges: BTreeMap<i32, (i64, i64)>,
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
