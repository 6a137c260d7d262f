//! The partition policy, in one place: which partition a product's events go to, how the
//! partitions are grouped into lanes (one transactional id each), which lane a request
//! belongs to, and which part of the state a lane's snapshot holds. Routing (`handler`),
//! ownership, the store and snapshots all ask [`PartitionPolicy`]; `tests::all_agree` checks
//! that they cannot disagree.
//!
//! The partition of a key is Kafka's own key partitioner — murmur2 of the key with Kafka's
//! seed, sign bit cleared, modulo the partition count — which is what librdkafka's
//! `murmur2_random` and the Java client's default do for a keyed record, so records land
//! where they always did. It is computed here rather than by librdkafka so an instance knows
//! before it writes which producer owns a request.

use std::collections::BTreeSet;

use uuid::Uuid;

/// How the partitions of the topic are shared between producer instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One instance writes every partition in one transaction at a time (a second instance
    /// with the same transactional id fences the first). A batch may touch any products.
    Single,
    /// Instances share the partitions through a consumer group; each partition has its own
    /// transactional id. A batch must stay within one partition.
    Partitions,
}

/// The one answer to "where does this go" for a topic of `partition_count` partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionPolicy {
    pub mode: Mode,
    pub partition_count: i32,
}

/// Where a request's commands are written, once [`PartitionPolicy::home`] assigned ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home {
    /// The partition whose lane writes the request.
    Partition(i32),
    /// The commands name products of partitions that no single transaction covers.
    Spans(Vec<i32>),
}

impl PartitionPolicy {
    pub fn new(mode: Mode, partition_count: i32) -> PartitionPolicy {
        PartitionPolicy {
            mode,
            partition_count: partition_count.max(1),
        }
    }

    /// The partition of `key` (a product id or an Idempotency-Key).
    pub fn partition_of(&self, key: &str) -> i32 {
        partition_of(key, self.partition_count)
    }

    /// Every partition of the topic.
    pub fn all(&self) -> Vec<i32> {
        (0..self.partition_count).collect()
    }

    /// The lanes `partitions` are written through: all of them together in `single` mode,
    /// one lane each in `partitions` mode.
    pub fn lanes_of(&self, partitions: Vec<i32>) -> Vec<Vec<i32>> {
        match self.mode {
            Mode::Single if partitions.is_empty() => Vec::new(),
            Mode::Single => vec![partitions],
            Mode::Partitions => partitions.into_iter().map(|p| vec![p]).collect(),
        }
    }

    /// The transactional id of the lane writing `lane` (its partitions).
    pub fn transactional_id(&self, base: &str, lane: &[i32]) -> String {
        match self.mode {
            Mode::Single => base.to_owned(),
            Mode::Partitions => format!("{base}-p{}", lane[0]),
        }
    }

    /// Which snapshot holds `lane`'s state: the whole topic's (`None`) in `single` mode, the
    /// partition's otherwise.
    pub fn snapshot_scope(&self, lane: &[i32]) -> Option<i32> {
        match self.mode {
            Mode::Single => None,
            Mode::Partitions => Some(lane[0]),
        }
    }

    /// Whether a product belongs in the snapshot of `scope` (see [`Self::snapshot_scope`]).
    pub fn in_scope(&self, scope: Option<i32>, product_id: &str) -> bool {
        scope.is_none_or(|partition| self.partition_of(product_id) == partition)
    }

    /// The home of a request naming `named` products (ids), with `idempotency_key`, whose
    /// creates (`creates` of them) need ids: returns the home and the new ids. In `single`
    /// mode one lane writes every partition, so new ids are drawn freely and the home is that
    /// of the first product. In `partitions` mode the home is the partition of the named
    /// products (they must share one), else that of the Idempotency-Key (so a retry lands
    /// where the first try did), else `pick_new()` (a partition this instance serves); new
    /// ids are drawn in the home partition.
    pub fn home(
        &self,
        named: &[&str],
        creates: usize,
        idempotency_key: Option<&str>,
        pick_new: impl FnOnce() -> i32,
    ) -> (Home, Vec<String>) {
        if self.mode == Mode::Single {
            let ids: Vec<String> = (0..creates).map(|_| Uuid::now_v7().to_string()).collect();
            let first = named.first().copied().or(ids.first().map(String::as_str));
            return (
                Home::Partition(first.map_or(0, |id| self.partition_of(id))),
                ids,
            );
        }
        let partitions: BTreeSet<i32> = named.iter().map(|id| self.partition_of(id)).collect();
        if partitions.len() > 1 {
            return (Home::Spans(partitions.into_iter().collect()), Vec::new());
        }
        let home = match (partitions.first(), idempotency_key) {
            (Some(partition), _) => *partition,
            (None, Some(key)) => self.partition_of(key),
            (None, None) => pick_new(),
        };
        let ids = (0..creates)
            .map(|_| new_id_in(home, self.partition_count))
            .collect();
        (Home::Partition(home), ids)
    }
}

/// The partition of `key` among `partitions`.
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    let hash = murmur2::murmur2(key.as_bytes(), murmur2::KAFKA_SEED) & 0x7fff_ffff;
    (hash % partitions.max(1) as u32) as i32
}

/// A new product id (UUID v7, so ids sort by creation) whose events go to `partition`: ids
/// are drawn until one hashes there (`partitions` draws on average).
pub fn new_id_in(partition: i32, partitions: i32) -> String {
    loop {
        let id = Uuid::now_v7().to_string();
        if partition_of(&id, partitions) == partition {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_kafkas_partitioner() {
        // Expected partitions from Kafka's Java client (`Utils.toPositive(Utils.murmur2(key)) %
        // n`), the reference librdkafka's murmur2 partitioner is checked against.
        assert_eq!(
            murmur2::murmur2(b"21", murmur2::KAFKA_SEED) as i32,
            -973932308
        );
        assert_eq!(
            murmur2::murmur2(b"foobar", murmur2::KAFKA_SEED) as i32,
            -790332482
        );
        assert_eq!(partition_of("21", 3), (-973932308_i32 & 0x7fff_ffff) % 3);
    }

    #[test]
    fn new_ids_land_in_the_partition_asked_for() {
        for partition in 0..6 {
            let id = new_id_in(partition, 6);
            assert_eq!(partition_of(&id, 6), partition);
            assert!(Uuid::parse_str(&id).is_ok());
        }
    }

    /// Routing, ownership, the store's snapshots and the directory all ask the policy; this
    /// checks that its answers fit together for every mode: a product's events go to a
    /// partition whose lane exists, whose transactional id is that lane's, whose snapshot
    /// scope holds the product and no other lane's does, and a request naming it is routed
    /// there, with new ids drawn beside it.
    #[test]
    fn all_agree() {
        for mode in [Mode::Single, Mode::Partitions] {
            for count in [1, 3, 7] {
                let policy = PartitionPolicy::new(mode, count);
                let lanes = policy.lanes_of(policy.all());
                let mut seen: Vec<i32> = lanes.iter().flatten().copied().collect();
                seen.sort_unstable();
                assert_eq!(seen, policy.all(), "every partition in exactly one lane");
                let ids: BTreeSet<String> = lanes
                    .iter()
                    .map(|l| policy.transactional_id("t", l))
                    .collect();
                assert_eq!(ids.len(), lanes.len(), "one transactional id per lane");
                for n in 0..200 {
                    let id = Uuid::now_v7().to_string();
                    let partition = policy.partition_of(&id);
                    let lane = lanes.iter().find(|l| l.contains(&partition)).unwrap();
                    for other in &lanes {
                        let scope = policy.snapshot_scope(other);
                        assert_eq!(
                            policy.in_scope(scope, &id),
                            other == lane,
                            "{mode:?} {count}"
                        );
                    }
                    let key = format!("key-{n}");
                    let (home, new) = policy.home(&[&id], 2, Some(&key), || unreachable!());
                    assert_eq!(home, Home::Partition(partition));
                    for new in new {
                        let theirs = policy.partition_of(&new);
                        assert!(
                            lane.contains(&theirs),
                            "a new id lands in the request's lane"
                        );
                    }
                    let (home, new) = policy.home(&[], 1, Some(&key), || unreachable!());
                    let Home::Partition(home) = home else {
                        panic!()
                    };
                    if mode == Mode::Partitions {
                        assert_eq!(
                            home,
                            policy.partition_of(&key),
                            "a retry lands where the first try did"
                        );
                        assert_eq!(policy.partition_of(&new[0]), home);
                    }
                }
            }
        }
    }

    #[test]
    fn a_request_across_lanes_is_refused_in_partitions_mode_only() {
        let pair = |policy: &PartitionPolicy| loop {
            let (a, b) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
            if policy.partition_of(&a) != policy.partition_of(&b) {
                return (a, b);
            }
        };
        let policy = PartitionPolicy::new(Mode::Partitions, 3);
        let (a, b) = pair(&policy);
        assert!(matches!(
            policy.home(&[&a, &b], 0, None, || 0).0,
            Home::Spans(_)
        ));
        let policy = PartitionPolicy::new(Mode::Single, 3);
        assert!(matches!(
            policy.home(&[&a, &b], 0, None, || 0).0,
            Home::Partition(_)
        ));
    }
}
