//! The rebuild's bulk load (`foldline_postgres::bulk`) against the batch-by-batch path, on a
//! real PostgreSQL: the same log gives the same model, compared by the rebuild's own
//! comparison; a log the bulk load cannot fold faithfully makes it fall back, with the reason.
//! The log here is an in-memory `EventSource` (the broker is not what is tested).

use std::collections::BTreeMap;

use chrono::{Duration, TimeZone, Utc};
use foldline_consumer_runtime::error::HistoryError;
use foldline_consumer_runtime::history::EventSource;
use foldline_consumer_runtime::{Batch, Record};
use foldline_postgres::apply::{apply_batch, Applied, Target};
use foldline_postgres::bulk::{load, Loaded};
use foldline_postgres::compare::{compare, Scope};
use foldline_postgres::model::{new_schema_name, ReadModel};
use foldline_schemas::{
    Envelope, LowStockThresholdSet, Payload, ProductCreated, ProductDeleted, ProductUpdated,
    StockAdjusted,
};
use foldline_service::position::Offsets;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

const GROUP: &str = "bulk-test";
const TOPIC: &str = "bulk-test-topic";
const PARTITIONS: i32 = 3;

/// A log in memory, handed out in batches of `batch` records per partition.
struct MemoryLog {
    records: BTreeMap<i32, Vec<Record>>,
    batch: usize,
}

impl EventSource for MemoryLog {
    async fn read(
        &mut self,
        from: &Offsets,
        batches: mpsc::Sender<Batch>,
    ) -> Result<Offsets, HistoryError> {
        let mut next = from.clone();
        for (partition, records) in &self.records {
            let start = from.get(*partition).unwrap_or(0);
            let wanted: Vec<&Record> = records.iter().filter(|r| r.offset >= start).collect();
            for chunk in wanted.chunks(self.batch) {
                let mut batch = Batch {
                    read_from: Offsets::from([(*partition, start)]),
                    ..Batch::default()
                };
                for record in chunk {
                    batch.consumed(*partition, record.offset, 0);
                    batch.records.push((*record).clone());
                }
                next.merge(&batch.next_offsets());
                batches.send(batch).await?;
            }
        }
        Ok(next)
    }

    fn undecodable(&self) -> u64 {
        0
    }
}

fn envelope(id: &str, version: i64, minutes: i64, payload: Payload) -> Envelope {
    Envelope {
        event_id: uuid::Uuid::new_v4(),
        product_id: id.to_owned(),
        version,
        occurred_at: Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
            + Duration::minutes(minutes),
        correlation_id: "bulk".into(),
        idempotency_key: None,
        command_index: None,
        payload,
        actor: (version % 2 == 0).then(|| "seller-a".to_owned()),
    }
}

/// `products` products over a few sellers, each created, then changed at random — stock,
/// price and name, its own threshold, deletion (the last event of a product, as the write
/// API has it) — spread over partitions by id.
fn random_log(products: usize, events: usize, seed: u64) -> BTreeMap<i32, Vec<Record>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut versions = vec![0i64; products];
    let mut deleted = vec![false; products];
    let mut log: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
    for n in 0..events {
        let p = if n < products {
            n
        } else {
            rng.random_range(0..products)
        };
        if deleted[p] {
            continue;
        }
        let id = format!("bulk-{p:05}");
        versions[p] += 1;
        let version = versions[p];
        let payload = if version == 1 {
            Payload::ProductCreated(ProductCreated {
                name: format!("Item {p}"),
                price_cents: rng.random_range(1..10_000),
                stock: rng.random_range(0..20),
                seller_id: format!("seller-{}", p % 7),
                low_stock_threshold: (p % 5 == 0).then_some(3),
            })
        } else {
            match rng.random_range(0..20) {
                0 => {
                    deleted[p] = true;
                    Payload::ProductDeleted(ProductDeleted {})
                }
                1 => Payload::LowStockThresholdSet(LowStockThresholdSet {
                    threshold: rng.random_range(1..10),
                }),
                2..=4 => Payload::ProductUpdated(ProductUpdated {
                    name: rng.random_bool(0.5).then(|| format!("Item {p} v{version}")),
                    price_cents: Some(rng.random_range(1..10_000)),
                }),
                _ => {
                    let new_stock = rng.random_range(0..20);
                    Payload::StockAdjusted(StockAdjusted {
                        delta: 0,
                        new_stock,
                        reason: Some("count".into()),
                        previous_stock: 0,
                    })
                }
            }
        };
        let partition = (p as i32) % PARTITIONS;
        let records = log.entry(partition).or_default();
        let offset = records.len() as i64;
        records.push(Record {
            partition,
            offset,
            key: Some(id.clone()),
            timestamp_ms: None,
            event: envelope(&id, version, n as i64, payload),
        });
    }
    log
}

async fn model() -> ReadModel {
    let url = foldline_testkit::postgres::fresh_database().await;
    let model = ReadModel::connect_lazy(&url, 4).unwrap();
    model.bootstrap().await.unwrap();
    model
}

fn target(schema: &str) -> Target<'_> {
    Target {
        schema,
        group: GROUP,
        topic: TOPIC,
        low_stock_threshold: 5,
    }
}

/// The log written batch by batch, as the live projector writes it.
async fn in_batches(model: &ReadModel, log: &BTreeMap<i32, Vec<Record>>, batch: usize) -> String {
    let schema = new_schema_name();
    model.create_model(&schema).await.unwrap();
    let mut source = MemoryLog {
        records: log.clone(),
        batch,
    };
    let (tx, mut rx) = mpsc::channel(4);
    let from = Offsets::new();
    let read = source.read(&from, tx);
    let write = async {
        while let Some(batch) = rx.recv().await {
            let mut conn = model.pool.begin().await.unwrap();
            let applied = apply_batch(&mut conn, &target(&schema), &batch)
                .await
                .unwrap();
            assert_eq!(applied, Applied::Done);
            conn.commit().await.unwrap();
        }
    };
    let (read, ()) = tokio::join!(read, write);
    read.unwrap();
    schema
}

async fn in_bulk(model: &ReadModel, log: &BTreeMap<i32, Vec<Record>>) -> (String, Loaded) {
    let schema = new_schema_name();
    model.create_model(&schema).await.unwrap();
    let mut source = MemoryLog {
        records: log.clone(),
        batch: 500,
    };
    let mut conn = model.pool.acquire().await.unwrap();
    let loaded = load(
        &mut conn,
        &target(&schema),
        &mut source,
        &indicatif::ProgressBar::hidden(),
    )
    .await
    .unwrap();
    (schema, loaded)
}

#[tokio::test]
async fn given_a_log_when_loaded_in_bulk_then_the_model_equals_the_one_written_batch_by_batch() {
    let model = model().await;
    let log = random_log(2_000, 30_000, 39);
    let batches = in_batches(&model, &log, 700).await;
    let (bulk, loaded) = in_bulk(&model, &log).await;
    let Loaded::Done(report) = loaded else {
        panic!("fell back: {loaded:?}")
    };
    let events: usize = log.values().map(Vec::len).sum();
    assert_eq!(report.events, events as u64);
    assert_eq!(report.products, 2_000);
    let ends: Offsets = log
        .iter()
        .map(|(p, records)| (*p, records.len() as i64))
        .collect();
    assert_eq!(report.next, ends);

    let ids: Vec<String> = (0..2_000).map(|p| format!("bulk-{p:05}")).collect();
    let mut conn = model.pool.begin().await.unwrap();
    let snapshot = compare(&mut conn, &batches, &bulk, GROUP, TOPIC, Scope::Snapshot)
        .await
        .unwrap();
    conn.rollback().await.unwrap();
    let mut conn = model.pool.begin().await.unwrap();
    let locked = compare(
        &mut conn,
        &batches,
        &bulk,
        GROUP,
        TOPIC,
        Scope::Locked { recheck: &ids },
    )
    .await
    .unwrap();
    let comparison = snapshot.then(locked);
    assert!(comparison.compared, "{}", comparison.summary());
    assert_eq!(
        comparison.history_events,
        events as i64,
        "{}",
        comparison.summary()
    );
    assert!(comparison.sellers >= 7, "{}", comparison.summary());
    assert!(
        comparison.equal(),
        "{}: {:?}",
        comparison.summary(),
        comparison.first
    );

    // The keys and indexes the migrations declare are back, and they hold.
    let pool = &model.pool;
    let indexes = |schema: String| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = $1
             AND tablename IN ('products', 'product_events')",
        )
        .bind(schema)
        .fetch_one(pool)
        .await
        .unwrap()
    };
    assert_eq!(indexes(bulk.clone()).await, indexes(batches.clone()).await);
    let duplicate = sqlx::query(&format!(
        "INSERT INTO {bulk}.product_events SELECT * FROM {bulk}.product_events LIMIT 1"
    ))
    .execute(&model.pool)
    .await;
    assert!(duplicate.is_err(), "the primary key is back");
}

#[tokio::test]
async fn given_a_model_that_differs_when_compared_then_the_difference_is_found() {
    // The comparison the bulk load relies on is not vacuous on bulk-loaded schemas.
    let model = model().await;
    let log = random_log(300, 3_000, 7);
    let batches = in_batches(&model, &log, 400).await;
    let (bulk, _) = in_bulk(&model, &log).await;
    sqlx::query(&format!(
        "UPDATE {bulk}.product_events SET payload = '{{}}'
         WHERE product_id = 'bulk-00042' AND version = 1"
    ))
    .execute(&model.pool)
    .await
    .unwrap();
    let mut conn = model.pool.begin().await.unwrap();
    let snapshot = compare(&mut conn, &batches, &bulk, GROUP, TOPIC, Scope::Snapshot)
        .await
        .unwrap();
    assert_eq!(
        snapshot.differences,
        1,
        "{}: {:?}",
        snapshot.summary(),
        snapshot.first
    );
}

#[tokio::test]
async fn given_a_version_that_does_not_grow_then_the_bulk_load_falls_back_and_says_why() {
    let model = model().await;
    let mut log = random_log(10, 50, 1);
    let again = log[&0][0].clone();
    let records = log.get_mut(&0).unwrap();
    let offset = records.len() as i64;
    records.push(Record { offset, ..again });
    let (_, loaded) = in_bulk(&model, &log).await;
    match loaded {
        Loaded::FellBack(why) => assert!(why.contains("version 1 follows version"), "{why}"),
        Loaded::Done(_) => panic!("a repeated version must not load in bulk"),
    }
}

#[tokio::test]
async fn given_a_value_postgres_refuses_then_the_bulk_load_falls_back_and_says_why() {
    let model = model().await;
    let mut log = random_log(10, 50, 2);
    let records = log.get_mut(&1).unwrap();
    let offset = records.len() as i64;
    let partition = 1;
    records.push(Record {
        partition,
        offset,
        key: None,
        timestamp_ms: None,
        event: envelope(
            "bulk-nul",
            1,
            0,
            Payload::ProductCreated(ProductCreated {
                name: "a\0b".into(),
                price_cents: 1,
                stock: 1,
                seller_id: "s".into(),
                low_stock_threshold: None,
            }),
        ),
    });
    let (_, loaded) = in_bulk(&model, &log).await;
    match loaded {
        Loaded::FellBack(why) => assert!(why.contains("PostgreSQL refused"), "{why}"),
        Loaded::Done(_) => panic!("a NUL in text cannot be stored"),
    }
}
