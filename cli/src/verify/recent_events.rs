//! The DynamoDB recent-events table's side of `foldline verify`: every event in the log
//! before the consumer's committed offsets is in the table once under its product and once
//! under its day (the items the consumer's own mapping makes of it), unless its TTL has run
//! out or it is parked; and no item names an event the log does not hold.

use std::collections::{BTreeSet, HashSet};

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::Utc;
use clap::Args;
use foldline_consumer_runtime::Record;
use foldline_recent_events::items::items_for;
use foldline_recent_events::DynamoDb;
use foldline_service::position::Offsets;

use super::Difference;

#[derive(Args, Clone)]
pub struct RecentEventsArgs {
    /// The recent-events table.
    #[arg(
        long,
        env = "FOLDLINE_RECENT_EVENTS_TABLE",
        default_value = "RecentEvents"
    )]
    recent_events_table: String,
    /// The recent-events consumer's group (whose committed offsets are the cut).
    #[arg(
        long,
        env = "FOLDLINE_RECENT_EVENTS_GROUP",
        default_value = foldline_recent_events::DEFAULT_GROUP
    )]
    recent_events_group: String,
    /// Days an item lives (the consumer's setting): older events are not expected.
    #[arg(long, env = "FOLDLINE_RECENT_EVENTS_TTL_DAYS", default_value_t = 30)]
    recent_events_ttl_days: i64,
    /// DynamoDB API endpoint (empty: AWS itself).
    #[arg(
        long,
        env = "FOLDLINE_DYNAMODB_ENDPOINT",
        default_value = "http://127.0.0.1:8000"
    )]
    dynamodb_endpoint: String,
}

/// The table at the consumer's cut, and what the log says it must hold.
pub struct Check {
    pub cut: Offsets,
    parked: HashSet<(i32, i64)>,
    pub parked_products: BTreeSet<String>,
    ttl: chrono::Duration,
    /// (pk, sk) of every event before the cut that must be there.
    expected: HashSet<(String, String)>,
    /// (pk, sk) of the events at or after the cut: there or not, both are right.
    after_cut: HashSet<(String, String)>,
    pub events: u64,
    dynamodb: DynamoDb,
    table: String,
}

impl Check {
    pub async fn start(
        args: &RecentEventsArgs,
        aws: &foldline_service::aws::AwsEndpoint,
        brokers: &str,
        topic: &str,
        partitions: &[i32],
    ) -> anyhow::Result<Check> {
        let cut: Offsets =
            crate::topic::committed_offsets(brokers, &args.recent_events_group, topic, partitions)?;
        let dynamodb = DynamoDb {
            aws: aws.clone(),
            dynamodb_endpoint: args.dynamodb_endpoint.clone(),
        };
        let client = dynamodb.client().await;
        let parked =
            foldline_recent_events::parked::read_parked(&client, &args.recent_events_table).await?;
        Ok(Check {
            cut,
            parked: parked.iter().map(|p| (p.partition, p.offset)).collect(),
            parked_products: parked.iter().map(|p| p.product_id.clone()).collect(),
            ttl: chrono::Duration::days(args.recent_events_ttl_days),
            expected: HashSet::new(),
            after_cut: HashSet::new(),
            events: 0,
            dynamodb,
            table: args.recent_events_table.clone(),
        })
    }

    pub fn apply(&mut self, record: &Record) {
        let keys = items_for(record, self.ttl).map(|item| (text(&item, "pk"), text(&item, "sk")));
        let before_cut = self
            .cut
            .get(record.partition)
            .is_some_and(|c| record.offset < c);
        // An item within a minute of its expiry may be gone any moment: not expected.
        let alive = record.event.occurred_at + self.ttl > Utc::now() + chrono::Duration::minutes(1);
        if before_cut && !self.parked.contains(&(record.partition, record.offset)) && alive {
            self.events += 1;
            self.expected.extend(keys);
        } else {
            self.after_cut.extend(keys);
        }
    }

    /// Scans the table and compares; the number of items compared and the differences.
    pub async fn compare(self) -> anyhow::Result<(usize, Vec<Difference>)> {
        let client = self.dynamodb.client().await;
        let mut found: HashSet<(String, String)> = HashSet::new();
        let mut start = None;
        loop {
            let page = client
                .scan()
                .table_name(&self.table)
                .projection_expression("pk, sk")
                .set_exclusive_start_key(start.take())
                .send()
                .await?;
            for item in page.items() {
                let pk = text(item, "pk");
                if pk != foldline_recent_events::parked::PARKED_PK {
                    found.insert((pk, text(item, "sk")));
                }
            }
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => break,
            }
        }
        let mut differences = Vec::new();
        for (pk, sk) in self.expected.difference(&found) {
            differences.push(Difference {
                what: format!("recent-events item {pk} / {sk}"),
                model: "missing".into(),
                log: "an event before the consumer's committed offsets".into(),
            });
        }
        for (pk, sk) in found.difference(&self.expected) {
            if !self.after_cut.contains(&(pk.clone(), sk.clone())) {
                differences.push(Difference {
                    what: format!("recent-events item {pk} / {sk}"),
                    model: "present".into(),
                    log: "no such event in the log".into(),
                });
            }
        }
        differences.sort_by(|a, b| a.what.cmp(&b.what));
        Ok((found.len(), differences))
    }
}

fn text(item: &foldline_recent_events::items::Item, key: &str) -> String {
    match item.get(key) {
        Some(AttributeValue::S(s)) => s.clone(),
        _ => String::new(),
    }
}
