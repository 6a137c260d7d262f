//! SIGKILL of the broker with a transaction open and in the middle of a commit.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context as _};

use crate::client::{read_all, Isolation, TxProducer};
use crate::Target;

const PARTITIONS: i32 = 3;

/// What the writer knew of each transaction.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Known {
    /// Its commit was acknowledged: it must be in the log, whole.
    Committed,
    /// Open when the broker was killed, never committed, then ended by the next instance's
    /// initialisation: aborted, so none of it may be visible.
    Aborted,
    /// Open, or committing, when the broker was killed: whole or absent.
    Unknown,
}

/// Transactions of one record per partition, named `t<n>`; the broker is killed once with a
/// transaction open and then three times during a commit (after 0, 2 and 5 ms).
pub fn sigkill_keeps_transactions_whole(target: &Target) -> anyhow::Result<()> {
    let brokers = target.brokers();
    let topic = target.create_topic("sigkill", PARTITIONS)?;
    let id = format!("{topic}-writer");
    let mut known = BTreeMap::new();
    let mut next = 0;
    let mut producer = TxProducer::start(&brokers, &id)?;

    let write = |producer: &TxProducer, n: usize| -> anyhow::Result<()> {
        producer.begin()?;
        for partition in 0..PARTITIONS {
            producer.send(&topic, partition, &format!("t{n}:{partition}"))?;
        }
        producer.delivered()
    };
    // After a restart: a new instance (which fences the old one and ends its open
    // transaction) writes and commits transaction `n`.
    let commit_after_restart = |n: usize| -> anyhow::Result<TxProducer> {
        let producer = TxProducer::start(&brokers, &id).context("init after the restart")?;
        write(&producer, n)?;
        producer.commit().context("commit after the restart")?;
        Ok(producer)
    };

    // A committed transaction, then one left open across the kill.
    write(&producer, next)?;
    producer.commit().context("first commit")?;
    known.insert(next, Known::Committed);
    next += 1;
    write(&producer, next)?;
    known.insert(next, Known::Aborted);
    next += 1;
    target.kill_broker()?;
    target.restart_broker()?;
    drop(producer);
    producer = commit_after_restart(next)?;
    known.insert(next, Known::Committed);
    next += 1;

    for delay_ms in [0, 2, 5] {
        write(&producer, next)?;
        let committed = std::thread::scope(|scope| {
            let commit = scope.spawn(|| producer.commit());
            std::thread::sleep(Duration::from_millis(delay_ms));
            let killed = target.kill_broker();
            let restarted = killed.and_then(|()| target.restart_broker());
            (
                commit.join().expect("commit does not panic").is_ok(),
                restarted,
            )
        });
        committed.1?;
        known.insert(
            next,
            if committed.0 {
                Known::Committed
            } else {
                Known::Unknown
            },
        );
        next += 1;
        drop(producer);
        producer = commit_after_restart(next)?;
        known.insert(next, Known::Committed);
        next += 1;
    }

    let (seen, _) = read_all(&brokers, &topic, PARTITIONS, Isolation::ReadCommitted)?;
    let mut parts: BTreeMap<usize, usize> = BTreeMap::new();
    for s in &seen {
        let n: usize = s
            .value
            .trim_start_matches('t')
            .split(':')
            .next()
            .and_then(|n| n.parse().ok())
            .context("a record this check did not write")?;
        *parts.entry(n).or_default() += 1;
    }
    for (n, state) in &known {
        let count = parts.get(n).copied().unwrap_or(0);
        match state {
            Known::Committed => ensure!(
                count == PARTITIONS as usize,
                "transaction t{n} was acknowledged as committed but {count} of its {PARTITIONS} records are visible"
            ),
            Known::Aborted => ensure!(
                count == 0,
                "transaction t{n}, open at the kill and aborted by the next instance, has {count} of {PARTITIONS} records visible"
            ),
            Known::Unknown => ensure!(
                count == 0 || count == PARTITIONS as usize,
                "transaction t{n}, cut by the kill, is half visible: {count} of {PARTITIONS} records"
            ),
        }
    }
    Ok(())
}
