//! Topics: create, list, describe (offsets and each consumer group's lag), consume (decoded
//! JSON lines in the shape of `rpk topic consume`).

use std::collections::HashMap;

use foldline_service::position::Offsets;
use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use foldline_schemas::wire::{CodecError, EventCodec};
use foldline_service::kafka::{self, TopicReader};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum TopicCommand {
    /// Create a topic unless it exists (no time-based deletion).
    Create {
        name: String,
        #[arg(long, short, default_value_t = 3)]
        partitions: i32,
    },
    /// Every topic with its partition count.
    List,
    /// Partitions with their offsets, and each consumer group's committed offsets and lag.
    Describe { topic: String },
    /// Print records as JSON lines (`topic`, `key`, `value` decoded through the registry,
    /// `timestamp`, `partition`, `offset`, `headers`), from the beginning by default, up to
    /// the end (or for ever with --follow).
    Consume {
        topic: String,
        /// Start at the beginning of each partition (the default).
        #[arg(long, conflicts_with = "offset")]
        from_beginning: bool,
        /// Start at this offset in each partition read.
        #[arg(long, short)]
        offset: Option<i64>,
        /// Stop after this many records.
        #[arg(short = 'n', long = "num")]
        num: Option<usize>,
        /// Read only this partition.
        #[arg(long, short)]
        partition: Option<i32>,
        /// Keep waiting for new records at the end.
        #[arg(long, short)]
        follow: bool,
    },
}

pub async fn run(command: TopicCommand, brokers: &str, registry: &str) -> anyhow::Result<()> {
    match command {
        TopicCommand::Create { name, partitions } => {
            kafka::ensure_topic(brokers, &name, partitions, &[("retention.ms", "-1")])
                .await
                .with_context(|| format!("creating topic {name} on {brokers}"))?;
            println!("topic {name} ready ({partitions} partitions)");
        }
        TopicCommand::List => {
            let consumer = admin_consumer(brokers, "foldline-cli")?;
            let metadata = consumer
                .fetch_metadata(None, Duration::from_secs(10))
                .with_context(|| format!("the broker at {brokers} did not answer"))?;
            let mut topics: Vec<_> = metadata
                .topics()
                .iter()
                .map(|t| (t.name().to_owned(), t.partitions().len()))
                .collect();
            topics.sort();
            for (name, partitions) in topics {
                println!("{}", json!({"topic": name, "partitions": partitions}));
            }
        }
        TopicCommand::Describe { topic } => describe(brokers, &topic)?,
        TopicCommand::Consume {
            topic,
            from_beginning: _,
            offset,
            num,
            partition,
            follow,
        } => consume(brokers, registry, &topic, offset, num, partition, follow).await?,
    }
    Ok(())
}

pub fn admin_consumer(brokers: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    Ok(kafka::base_config(brokers, "foldline-cli")
        .set("group.id", group)
        .create()?)
}

pub fn partition_count(brokers: &str, topic: &str) -> anyhow::Result<i32> {
    let consumer = admin_consumer(brokers, "foldline-cli")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("the broker at {brokers} did not answer"))?;
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as i32)
        .with_context(|| format!("topic {topic} does not exist"))
}

/// The offsets `group` committed for `partitions` of `topic` (partitions without one left out).
pub fn committed_offsets(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> anyhow::Result<Offsets> {
    let member = admin_consumer(brokers, group)?;
    let mut list = TopicPartitionList::new();
    for p in partitions {
        list.add_partition(topic, *p);
    }
    let committed = member.committed_offsets(list, Duration::from_secs(10))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

fn describe(brokers: &str, topic: &str) -> anyhow::Result<()> {
    let consumer = admin_consumer(brokers, "foldline-cli")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("the broker at {brokers} did not answer"))?;
    let Some(found) = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
    else {
        anyhow::bail!("topic {topic} does not exist");
    };
    let partitions: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
    println!("topic {topic}: {} partitions", partitions.len());
    println!("{:>9} {:>14} {:>14}", "partition", "low", "high");
    let mut high = HashMap::new();
    for p in &partitions {
        let (low, hi) = consumer.fetch_watermarks(topic, *p, Duration::from_secs(10))?;
        high.insert(*p, hi);
        println!("{p:>9} {low:>14} {hi:>14}");
    }
    println!("(watermarks come from the broker: tansu's can be wrong, Redpanda's are right)");
    let groups = match consumer.fetch_group_list(None, Duration::from_secs(10)) {
        Ok(list) => list
            .groups()
            .iter()
            .map(|g| g.name().to_owned())
            .collect::<Vec<_>>(),
        Err(error) => {
            println!("consumer groups: not available from this broker ({error})");
            return Ok(());
        }
    };
    for group in groups {
        let Ok(committed) = committed_offsets(brokers, &group, topic, &partitions) else {
            continue;
        };
        let mut rows: Vec<(i32, i64)> = committed.into_iter().collect();
        rows.sort();
        if rows.is_empty() {
            continue;
        }
        println!("group {group}:");
        for (p, o) in rows {
            println!("{p:>9} committed {o:>14} lag {:>10}", (high[&p] - o).max(0));
        }
    }
    Ok(())
}

async fn consume(
    brokers: &str,
    registry: &str,
    topic: &str,
    offset: Option<i64>,
    num: Option<usize>,
    partition: Option<i32>,
    follow: bool,
) -> anyhow::Result<()> {
    let codec = EventCodec::new(registry, topic)?;
    let only = partition.map(|p| vec![p]);
    let mut start = Offsets::new();
    if let Some(offset) = offset {
        let all = match &only {
            Some(list) => list.clone(),
            None => (0..partition_count(brokers, topic)?).collect(),
        };
        start = all.into_iter().map(|p| (p, offset)).collect();
    }
    let mut reader = TopicReader::open(
        brokers,
        "foldline-cli-consume",
        topic,
        &start,
        only.as_deref(),
        follow,
    )
    .with_context(|| format!("reading {topic} from {brokers}"))?;
    let mut printed = 0;
    let stdout = std::io::stdout();
    while num.is_none_or(|n| printed < n) {
        let Some(message) = reader.next().await? else {
            break;
        };
        let line = record_json(topic, &message, &codec).await;
        let mut out = stdout.lock();
        if writeln!(out, "{line}").is_err() {
            break; // the reader went away (a closed pipe): stop quietly
        }
        let _ = out.flush();
        printed += 1;
    }
    Ok(())
}

/// One record in the shape of `rpk topic consume`, with the value decoded through the
/// registry (or, when it cannot be, as text with a `value_error`).
pub async fn record_json(topic: &str, message: &OwnedMessage, codec: &EventCodec) -> Value {
    let text = |bytes: Option<&[u8]>| bytes.map(|b| String::from_utf8_lossy(b).into_owned());
    let headers: Vec<Value> = message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| json!({"key": h.key, "value": text(h.value)}))
                .collect()
        })
        .unwrap_or_default();
    let mut line = json!({
        "topic": topic,
        "key": text(message.key()),
        "timestamp": message.timestamp().to_millis(),
        "partition": message.partition(),
        "offset": message.offset(),
        "headers": headers,
    });
    match message.payload() {
        None => line["value"] = Value::Null,
        Some(bytes) => match codec.decode(bytes).await {
            Ok(event) => line["value"] = serde_json::to_value(&event).unwrap_or(Value::Null),
            // Shown as written, with a note that this build cannot interpret all of it.
            Err(CodecError::NewerSchema(newer)) => {
                line["value_note"] = json!(newer.to_string());
                line["value"] = newer.json;
            }
            Err(error) => {
                line["value"] = json!(String::from_utf8_lossy(bytes));
                line["value_error"] = json!(error.to_string());
            }
        },
    }
    line
}
