//! read_committed against aborted and open transactions, and zombie fencing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::client::{read_all, reader, values, Isolation, TxProducer};
use crate::Target;

const PARTITIONS: i32 = 3;
const PRODUCERS: usize = 3;
const ROUNDS: usize = 8;

/// Three producers keep a transaction open each at once and write to every partition in
/// turn, so their records interleave; once every record is acknowledged, one of the three
/// transactions of each round is aborted (a different producer each round), the others
/// committed.
pub fn hides_aborted(target: &Target) -> anyhow::Result<()> {
    let brokers = target.brokers();
    let topic = target.create_topic("aborted", PARTITIONS)?;
    let producers = (0..PRODUCERS)
        .map(|i| TxProducer::start(&brokers, &format!("{topic}-p{i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut committed = BTreeSet::new();
    let mut aborted = BTreeSet::new();
    let mut sequence = [0u64; PRODUCERS];
    for round in 0..ROUNDS {
        for producer in &producers {
            producer.begin()?;
        }
        let mut written: Vec<Vec<String>> = vec![Vec::new(); PRODUCERS];
        for _ in 0..3 {
            for (i, producer) in producers.iter().enumerate() {
                for partition in 0..PARTITIONS {
                    sequence[i] += 1;
                    let value = format!("p{i}:{}:r{round}", sequence[i]);
                    producer.send(&topic, partition, &value)?;
                    written[i].push(value);
                }
            }
        }
        for producer in &producers {
            producer.delivered()?;
        }
        for (i, producer) in producers.iter().enumerate() {
            if (round + i) % PRODUCERS == 0 {
                producer.abort()?;
                aborted.extend(written[i].drain(..));
            } else {
                producer.commit().context("commit")?;
                committed.extend(written[i].drain(..));
            }
        }
    }

    let (everything, _) = read_all(&brokers, &topic, PARTITIONS, Isolation::ReadUncommitted)?;
    let everything: BTreeSet<String> = values(&everything).into_iter().collect();
    let unwritten = aborted.difference(&everything).count();
    ensure!(
        unwritten == 0,
        "{unwritten} records of aborted transactions are not in the log at all (read_uncommitted): the check proves nothing"
    );

    let (seen, _) = read_all(&brokers, &topic, PARTITIONS, Isolation::ReadCommitted)?;
    let visible_aborted: Vec<&String> = seen
        .iter()
        .map(|s| &s.value)
        .filter(|v| aborted.contains(*v))
        .collect();
    ensure!(
        visible_aborted.is_empty(),
        "read_committed saw {} of {} records of aborted transactions (e.g. {:?})",
        visible_aborted.len(),
        aborted.len(),
        visible_aborted.iter().take(3).collect::<Vec<_>>()
    );
    let read: Vec<String> = values(&seen);
    let distinct: BTreeSet<String> = read.iter().cloned().collect();
    ensure!(
        distinct.len() == read.len(),
        "read_committed saw {} duplicate records",
        read.len() - distinct.len()
    );
    let missing = committed.difference(&distinct).count();
    ensure!(
        missing == 0,
        "read_committed missed {missing} of {} committed records",
        committed.len()
    );
    // Each producer's records keep their order within a partition.
    let mut last: BTreeMap<(i32, String), u64> = BTreeMap::new();
    for s in &seen {
        let mut parts = s.value.split(':');
        let producer = parts.next().unwrap_or_default().to_owned();
        let number: u64 = parts
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_default();
        if let Some(before) = last.insert((s.partition, producer.clone()), number) {
            ensure!(
                before < number,
                "partition {}: {producer}'s record {number} came after its record {before}",
                s.partition
            );
        }
    }
    Ok(())
}

/// A transaction left open on a partition holds back everything from its first record on,
/// another producer's committed transaction behind it included, until it commits.
pub fn holds_back_open(target: &Target) -> anyhow::Result<()> {
    let brokers = target.brokers();
    let topic = target.create_topic("open", 1)?;
    let open = TxProducer::start(&brokers, &format!("{topic}-open"))?;
    let other = TxProducer::start(&brokers, &format!("{topic}-other"))?;
    open.begin()?;
    open.send(&topic, 0, "open-1")?;
    open.send(&topic, 0, "open-2")?;
    open.delivered()?;
    other.begin()?;
    other.send(&topic, 0, "other-1")?;
    other.delivered()?;
    other.commit().context("commit of the second producer")?;

    let (uncommitted, _) = read_all(&brokers, &topic, 1, Isolation::ReadUncommitted)?;
    ensure!(
        values(&uncommitted) == ["open-1", "open-2", "other-1"],
        "read_uncommitted saw {:?}, not the three records written",
        values(&uncommitted)
    );

    let consumer = reader(&brokers, Isolation::ReadCommitted)?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&topic, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let held_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < held_until {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            bail!(
                "read_committed saw {:?} at offset {} while an earlier transaction was still open",
                String::from_utf8_lossy(message.payload().unwrap_or_default()),
                message.offset()
            );
        }
    }
    open.commit().context("commit of the open transaction")?;
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.len() < 3 && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            seen.push(String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned());
        }
    }
    ensure!(
        seen == ["open-1", "open-2", "other-1"],
        "after the commit read_committed saw {seen:?}, expected the three records in log order"
    );
    Ok(())
}

/// A second instance of the same transactional.id fences the first: the first can no
/// longer commit, and the transaction it had open is aborted.
pub fn fences_zombie(target: &Target) -> anyhow::Result<()> {
    let brokers = target.brokers();
    let topic = target.create_topic("zombie", 1)?;
    let id = format!("{topic}-writer");
    let zombie = TxProducer::start(&brokers, &id)?;
    zombie.begin()?;
    zombie.send(&topic, 0, "zombie-1")?;
    zombie.delivered()?;

    let successor = TxProducer::start(&brokers, &id)?;
    // The zombie goes on as if nothing happened; its send may fail at once or at commit.
    let zombie_committed = zombie
        .send(&topic, 0, "zombie-2")
        .and_then(|()| zombie.delivered())
        .and_then(|()| zombie.commit().map_err(Into::into))
        .is_ok();
    ensure!(
        !zombie_committed,
        "the first instance committed after a second instance of {id} initialised"
    );
    successor.begin()?;
    successor.send(&topic, 0, "successor-1")?;
    successor.delivered()?;
    successor.commit().context("the successor's commit")?;

    let (seen, _) = read_all(&brokers, &topic, 1, Isolation::ReadCommitted)?;
    ensure!(
        values(&seen) == ["successor-1"],
        "read_committed saw {:?}; only the successor's record was committed",
        values(&seen)
    );
    Ok(())
}
