//! A retried batch is stored once: the proxy sends one Produce request twice.

use anyhow::{ensure, Context as _};

use crate::client::{
    delivered, idempotent_producer, read_all, send, values, Isolation, TxProducer,
};
use crate::Target;

const RECORDS: usize = 10;

pub fn deduplicates_retry(target: &Target) -> anyhow::Result<()> {
    let brokers = target.brokers();
    let proxy = target.proxy()?;
    let topic = target.create_topic("idempotent", 1)?;
    let mut expected = Vec::new();

    // Inside a transaction, as Foldline's producer writes.
    let producer = TxProducer::start(&brokers, &format!("{topic}-writer"))?;
    producer.begin()?;
    proxy.replay_next_produce();
    for i in 0..RECORDS {
        let value = format!("txn-{i}");
        producer.send(&topic, 0, &value)?;
        expected.push(value);
    }
    producer.delivered()?;
    producer.commit().context("commit")?;
    ensure!(
        proxy.replayed() == 1,
        "the proxy replayed {} Produce requests, expected 1: the check proves nothing",
        proxy.replayed()
    );

    // Outside one: an idempotent producer.
    let plain = idempotent_producer(&brokers)?;
    proxy.replay_next_produce();
    for i in 0..RECORDS {
        let value = format!("plain-{i}");
        send(&plain, &topic, 0, &value)?;
        expected.push(value);
    }
    delivered(&plain)?;
    ensure!(
        proxy.replayed() == 2,
        "the proxy replayed {} Produce requests, expected 2",
        proxy.replayed()
    );

    let (seen, _) = read_all(&brokers, &topic, 1, Isolation::ReadCommitted)?;
    ensure!(
        values(&seen) == expected,
        "after one Produce request of each producer was sent twice, the log holds {} records, expected {} once each in order: {:?}",
        seen.len(),
        expected.len(),
        values(&seen)
    );
    Ok(())
}
