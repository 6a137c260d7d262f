//! Which partition a product's events go to, computed here rather than by librdkafka, so an
//! instance knows before it writes which producer owns a request (see [`crate::ownership`]).
//!
//! It is Kafka's own key partitioner — murmur2 of the key with Kafka's seed, sign bit
//! cleared, modulo the partition count — which is what librdkafka's `murmur2_random` and the
//! Java client's default do for a keyed record, so records land where they always did.

use uuid::Uuid;

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
}
