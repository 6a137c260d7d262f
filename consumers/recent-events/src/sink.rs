//! The recent-events sink: every event of a batch as two items, written with BatchWriteItem
//! in requests of 25 (DynamoDB's limit), several requests in flight, unprocessed items
//! retried with exponential backoff and jitter. The batch is acknowledged (and its offsets
//! committed) only when every item is written; items are deterministic, so a batch written
//! twice leaves the same table.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
use aws_sdk_dynamodb::Client;
use foldline_consumer_runtime::{Batch, Parked, Record, Sink, SinkError, Written};
use foldline_service::aws::CallError;
use foldline_service::retry::{self, Delays};
use futures::{StreamExt, TryStreamExt};
use prometheus::{Histogram, HistogramOpts, IntCounter, Registry};

use crate::items::{items_for, Item, ITEMS_PER_REQUEST};
use crate::parked::{delete_parked, parked_item, read_parked};

/// Rounds of retrying unprocessed items before the batch is handed back as a transient error
/// (the runtime then pauses and retries the whole batch, which is harmless).
const UNPROCESSED_ROUNDS: u32 = 8;

pub struct RecentEventsSink {
    pub client: Client,
    pub table: String,
    pub ttl: chrono::Duration,
    /// BatchWriteItem requests in flight at once.
    pub concurrency: usize,
    metrics: WriterMetrics,
}

impl RecentEventsSink {
    pub fn new(client: Client, table: String, ttl: chrono::Duration, concurrency: usize) -> Self {
        RecentEventsSink {
            client,
            table,
            ttl,
            concurrency: concurrency.max(1),
            metrics: WriterMetrics::new(),
        }
    }
}

/// A store error as the runtime sees it: an item or key past DynamoDB's size limits is the
/// data's fault (the product is parked), the rest as `CallError` says.
fn classify(error: CallError) -> SinkError {
    match error {
        CallError::TooLarge(_) => SinkError::Data(error.into()),
        other => SinkError::classify(other),
    }
}

impl Sink for RecentEventsSink {
    async fn write(&mut self, batch: &Batch) -> Result<Written, SinkError> {
        self.write_items(batch.records.iter(), batch.parked.iter().map(parked_item))
            .await
            .map_err(classify)?;
        Ok(Written::Done)
    }

    fn parks(&self) -> bool {
        true
    }

    async fn parked(&mut self) -> Result<Vec<Parked>, SinkError> {
        read_parked(&self.client, &self.table)
            .await
            .map_err(classify)
    }

    /// Items overwrite themselves, so a retry that dies half-way and is run again leaves the
    /// same table: the records' items first, then the entries go.
    async fn unpark(&mut self, product: &str, records: Option<&[Record]>) -> Result<(), SinkError> {
        let entries: Vec<Parked> = read_parked(&self.client, &self.table)
            .await
            .map_err(classify)?
            .into_iter()
            .filter(|p| p.product_id == product)
            .collect();
        if let Some(records) = records {
            self.write_items(records.iter(), std::iter::empty())
                .await
                .map_err(classify)?;
        }
        delete_parked(&self.client, &self.table, &entries)
            .await
            .map_err(classify)
    }

    fn register_metrics(&self, registry: &Registry) {
        self.metrics.register(registry);
    }
}

impl RecentEventsSink {
    /// Writes every record's two items and the `extra` items, several requests in flight.
    async fn write_items<'r>(
        &self,
        records: impl Iterator<Item = &'r Record>,
        extra: impl Iterator<Item = Item>,
    ) -> Result<(), CallError> {
        // Items are moved into their requests, never copied.
        let requests: Vec<Vec<Item>> = {
            let mut items = records
                .flat_map(|record| items_for(record, self.ttl))
                .chain(extra)
                .peekable();
            let mut requests = Vec::new();
            while items.peek().is_some() {
                requests.push(items.by_ref().take(ITEMS_PER_REQUEST).collect());
            }
            requests
        };
        futures::stream::iter(requests)
            .map(|chunk| write_items(&self.client, &self.table, chunk, &self.metrics))
            .buffer_unordered(self.concurrency)
            .try_collect::<()>()
            .await
    }
}

/// Writes up to 25 items, retrying what DynamoDB leaves unprocessed (throttling).
pub async fn write_items(
    client: &Client,
    table: &str,
    items: Vec<Item>,
    metrics: &WriterMetrics,
) -> Result<(), CallError> {
    let mut pending: Vec<WriteRequest> = items
        .into_iter()
        .map(|item| {
            let put = PutRequest::builder()
                .set_item(Some(item))
                .build()
                .expect("an item is set");
            WriteRequest::builder().put_request(put).build()
        })
        .collect();
    let mut delays = Delays::new(retry::forever(
        Duration::from_millis(50),
        Duration::from_secs(5),
    ));
    for round in 0..=UNPROCESSED_ROUNDS {
        let count = pending.len() as u64;
        let started = Instant::now();
        let answer = client
            .batch_write_item()
            .request_items(table, std::mem::take(&mut pending))
            .send()
            .await
            .map_err(|e| CallError::classify("batch write item", e))?;
        metrics
            .request_seconds
            .observe(started.elapsed().as_secs_f64());
        pending = answer
            .unprocessed_items()
            .and_then(|u| u.get(table))
            .cloned()
            .unwrap_or_default();
        metrics.items.inc_by(count - pending.len() as u64);
        if pending.is_empty() {
            return Ok(());
        }
        metrics.unprocessed.inc_by(pending.len() as u64);
        if round < UNPROCESSED_ROUNDS {
            tokio::time::sleep(delays.next_delay()).await;
        }
    }
    Err(CallError::Unavailable(format!(
        "{} items still unprocessed after {UNPROCESSED_ROUNDS} retries",
        pending.len()
    )))
}

#[derive(Clone)]
pub struct WriterMetrics {
    items: IntCounter,
    unprocessed: IntCounter,
    request_seconds: Histogram,
}

impl WriterMetrics {
    pub fn new() -> WriterMetrics {
        WriterMetrics {
            items: IntCounter::new("dynamodb_items_written_total", "Items written")
                .expect("valid metric"),
            unprocessed: IntCounter::new(
                "dynamodb_unprocessed_items_total",
                "Items DynamoDB left unprocessed and that were retried",
            )
            .expect("valid metric"),
            request_seconds: Histogram::with_opts(
                HistogramOpts::new("dynamodb_batch_write_seconds", "BatchWriteItem latency")
                    .buckets(prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid")),
            )
            .expect("valid metric"),
        }
    }

    fn register(&self, registry: &Registry) {
        let _ = registry.register(Box::new(self.items.clone()));
        let _ = registry.register(Box::new(self.unprocessed.clone()));
        let _ = registry.register(Box::new(self.request_seconds.clone()));
    }
}

impl Default for WriterMetrics {
    fn default() -> Self {
        WriterMetrics::new()
    }
}
