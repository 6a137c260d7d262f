//! Offsets past commit markers, and consumer offsets inside transactions.

use anyhow::{ensure, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use crate::client::{config, read_all, reader, Isolation, TxProducer, CALL};
use crate::Target;

/// A committed transaction of three records on an empty partition takes offsets 0-2 and its
/// marker 3; an open one of two more takes 4 and 5.
pub fn watermarks(target: &Target) -> anyhow::Result<()> {
    let brokers = target.brokers();
    let topic = target.create_topic("watermarks", 1)?;
    let producer = TxProducer::start(&brokers, &format!("{topic}-writer"))?;
    producer.begin()?;
    for i in 0..3 {
        producer.send(&topic, 0, &format!("c{i}"))?;
    }
    producer.commit().context("commit")?;

    let uncommitted = reader(&brokers, Isolation::ReadUncommitted)?;
    let committed = reader(&brokers, Isolation::ReadCommitted)?;
    let (low, high) = uncommitted.fetch_watermarks(&topic, 0, CALL)?;
    ensure!(
        (low, high) == (0, 4),
        "watermarks after a committed transaction of 3 records: ({low}, {high}), expected (0, 4): the commit marker takes an offset"
    );

    producer.begin()?;
    producer.send(&topic, 0, "open-1")?;
    producer.send(&topic, 0, "open-2")?;
    producer.delivered()?;
    let (_, high) = uncommitted.fetch_watermarks(&topic, 0, CALL)?;
    ensure!(
        high == 6,
        "high watermark with 2 records of an open transaction after offset 3: {high}, expected 6"
    );
    let (_, stable) = committed.fetch_watermarks(&topic, 0, CALL)?;
    ensure!(
        stable == 4,
        "ListOffsets(latest) at read_committed with a transaction open from offset 4: {stable}, expected the last stable offset 4"
    );
    producer.commit().context("second commit")?;

    let (seen, ends) = read_all(&brokers, &topic, 1, Isolation::ReadCommitted)?;
    let offsets: Vec<i64> = seen.iter().map(|s| s.offset).collect();
    ensure!(
        offsets == [0, 1, 2, 4, 5],
        "read_committed read offsets {offsets:?}, expected [0, 1, 2, 4, 5] (3 and 6 are markers)"
    );
    ensure!(
        ends.get(&0) == Some(&7),
        "read_committed reader's position at the end: {:?}, expected 7 (past the second marker)",
        ends.get(&0)
    );
    Ok(())
}

/// Offsets sent with `send_offsets_to_transaction` follow the transaction's outcome.
pub fn transactional_offsets(target: &Target) -> anyhow::Result<()> {
    let brokers = target.brokers();
    let topic = target.create_topic("txn-offsets", 1)?;
    let group = foldline_testkit::unique("conformance-group");
    let consumer: BaseConsumer = config(&brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer
        .group_metadata()
        .context("a consumer with a group.id has group metadata")?;
    let producer = TxProducer::start(&brokers, &format!("{topic}-writer"))?;
    let offsets = |next: i64| -> anyhow::Result<TopicPartitionList> {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&topic, 0, Offset::Offset(next))?;
        Ok(list)
    };
    let committed_offset = || -> anyhow::Result<Offset> {
        let mut asked = TopicPartitionList::new();
        asked.add_partition(&topic, 0);
        let answer = consumer.committed_offsets(asked, CALL)?;
        Ok(answer
            .find_partition(&topic, 0)
            .map(|p| p.offset())
            .unwrap_or(Offset::Invalid))
    };

    producer.begin()?;
    producer.send(&topic, 0, "aborted")?;
    producer
        .inner
        .send_offsets_to_transaction(&offsets(10)?, &metadata, CALL)
        .context("send_offsets_to_transaction")?;
    producer.abort()?;
    let after_abort = committed_offset()?;
    ensure!(
        after_abort == Offset::Invalid,
        "group {group}'s offset after an aborted transaction: {after_abort:?}, expected none"
    );

    producer.begin()?;
    producer.send(&topic, 0, "committed")?;
    producer
        .inner
        .send_offsets_to_transaction(&offsets(20)?, &metadata, CALL)
        .context("send_offsets_to_transaction")?;
    producer.commit().context("commit")?;
    let after_commit = committed_offset()?;
    ensure!(
        after_commit == Offset::Offset(20),
        "group {group}'s offset after a committed transaction: {after_commit:?}, expected 20"
    );
    Ok(())
}
