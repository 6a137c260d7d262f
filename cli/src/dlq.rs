//! The dead-letter topic: see what is in it and why, and put records back once the cause is
//! fixed (for example the schema they were written with is now registered).

use std::collections::HashMap;

use foldline_service::position::Offsets;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use foldline_schemas::wire::EventCodec;
use foldline_service::kafka::{self, TopicReader};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::json;

use crate::topic::admin_consumer;

/// The consumer group whose committed offsets remember what `dlq replay` already handled.
const REPLAY_GROUP: &str = "foldline-dlq-replay";

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Every dead-lettered record: where it came from, why, and its size.
    List {
        #[arg(long, env = "FOLDLINE_DLQ_TOPIC", default_value = "products.dlq")]
        topic: String,
    },
    /// Re-publish dead-lettered records to their source topic, each once: those that decode
    /// now (all with --force). Progress is kept in the group `foldline-dlq-replay`.
    Replay {
        #[arg(long, env = "FOLDLINE_DLQ_TOPIC", default_value = "products.dlq")]
        topic: String,
        /// Also re-publish records that still do not decode.
        #[arg(long)]
        force: bool,
        /// Only show what would be re-published.
        #[arg(long)]
        dry_run: bool,
    },
}

pub async fn run(command: DlqCommand, brokers: &str, registry: &str) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { topic } => {
            let mut reader = TopicReader::open(
                brokers,
                "foldline-cli-dlq",
                &topic,
                &Offsets::new(),
                None,
                false,
            )
            .with_context(|| format!("reading {topic} from {brokers}"))?;
            while let Some(message) = reader.next().await? {
                println!("{}", describe(&message));
            }
        }
        DlqCommand::Replay {
            topic,
            force,
            dry_run,
        } => replay(brokers, registry, &topic, force, dry_run).await?,
    }
    Ok(())
}

fn header<'a>(message: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}

fn describe(message: &OwnedMessage) -> serde_json::Value {
    json!({
        "partition": message.partition(),
        "offset": message.offset(),
        "key": message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        "source_topic": header(message, "dlq-source-topic"),
        "source_partition": header(message, "dlq-source-partition").and_then(|p| p.parse::<i64>().ok()),
        "source_offset": header(message, "dlq-source-offset").and_then(|o| o.parse::<i64>().ok()),
        "reason": header(message, "dlq-reason"),
        "bytes": message.payload().map_or(0, <[u8]>::len),
    })
}

async fn replay(
    brokers: &str,
    registry: &str,
    topic: &str,
    force: bool,
    dry_run: bool,
) -> anyhow::Result<()> {
    let partitions = crate::topic::partition_count(brokers, topic)?;
    let all: Vec<i32> = (0..partitions).collect();
    let start = crate::topic::committed_offsets(brokers, REPLAY_GROUP, topic, &all)?;
    let producer: FutureProducer = kafka::producer_config(brokers, "foldline-cli-dlq")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()?;
    let mut reader = TopicReader::open(brokers, "foldline-cli-dlq", topic, &start, None, false)?;
    let (mut moved, mut kept) = (0, 0);
    // One codec per source topic: it caches the schemas it fetched from the registry.
    let mut codecs: HashMap<String, EventCodec> = HashMap::new();
    while let Some(message) = reader.next().await? {
        let Some(source) = header(&message, "dlq-source-topic") else {
            kept += 1;
            continue;
        };
        let decodes = match message.payload() {
            Some(bytes) => {
                if !codecs.contains_key(source) {
                    codecs.insert(source.to_owned(), EventCodec::new(registry, source)?);
                }
                codecs[source].decode(bytes).await.is_ok()
            }
            None => false,
        };
        let mut line = describe(&message);
        if !(decodes || force) {
            line["action"] = json!("kept: still does not decode");
            println!("{line}");
            kept += 1;
            continue;
        }
        line["action"] = json!(if dry_run {
            "would re-publish"
        } else {
            "re-published"
        });
        if !dry_run {
            let mut headers = OwnedHeaders::new();
            for h in message.headers().into_iter().flat_map(|h| h.iter()) {
                if !h.key.starts_with("dlq-") {
                    headers = headers.insert(Header {
                        key: h.key,
                        value: h.value,
                    });
                }
            }
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(source).headers(headers);
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(value) = message.payload() {
                record = record.payload(value);
            }
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| anyhow::anyhow!("re-publishing to {source} failed: {e}"))?;
        }
        println!("{line}");
        moved += 1;
    }
    if !dry_run {
        // Remember how far we got, so the same records are not re-published twice.
        let mut done = TopicPartitionList::new();
        for (p, next) in reader.next_offsets() {
            done.add_partition_offset(topic, p, Offset::Offset(next))?;
        }
        admin_consumer(brokers, REPLAY_GROUP)?
            .commit(&done, CommitMode::Sync)
            .context("recording replay progress")?;
    }
    eprintln!(
        "{moved} re-published{}, {kept} kept",
        if dry_run { " (dry run)" } else { "" }
    );
    Ok(())
}
