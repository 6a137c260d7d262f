//! The producer starts from its snapshot in S3 plus the log's tail (issue 17), keeps
//! Idempotency-Key answers and product versions across the restart, and ignores a snapshot
//! that does not match the log (reading the whole log instead).

use std::time::Duration;

use foldline_producer::snapshot_store::SnapshotStore;
use foldline_testkit::process::Restartable;
use serde_json::{json, Value};

const REPLAYED: &str = "producer_log_events_replayed_total";

struct Writes {
    client: reqwest::Client,
    url: String,
}

impl Writes {
    /// Creates a product with `key`; answers (status, body).
    async fn create(&self, key: &str, n: usize) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/products", self.url))
            .header("idempotency-key", key)
            .json(&json!({"name": format!("Lamp {n}"), "price_cents": 1000, "stock": 10, "seller_id": "s-1"}))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn adjust(&self, id: &str, expected_version: i64) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/products/{id}/stock", self.url))
            .header("if-match", format!("\"{expected_version}\""))
            .json(&json!({"delta": -1}))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }
}

async fn snapshots(topic: &str) -> SnapshotStore {
    // The settings a producer gets from this environment.
    let config = foldline_producer::Config::local().snapshot;
    SnapshotStore::connect(&config, topic)
        .await
        .expect("scripts/test sets a snapshot bucket")
}

/// Waits until the stored snapshot holds `products` products.
async fn wait_snapshot_holding(store: &SnapshotStore, products: usize) {
    for _ in 0..100 {
        if let Ok(Some(snapshot)) = store.load().await {
            if snapshot.products.len() >= products {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no snapshot holding {products} products within 20 s");
}

#[tokio::test]
async fn a_restart_reads_only_the_tail_after_the_snapshot_and_keeps_answers_and_versions() {
    let topic = foldline_testkit::unique("products");
    let mut producer = Restartable::producer(&topic).await;
    let writes = Writes {
        client: foldline_testkit::auth::client(),
        url: producer.service.url.clone(),
    };
    let mut first = Vec::new();
    for n in 0..30 {
        let (status, body) = writes.create(&format!("{topic}-k{n}"), n).await;
        assert_eq!(status, 201, "{body}");
        first.push(body);
    }
    let store = snapshots(&topic).await;
    // Every create is one event, so the snapshot's products are the events it covers.
    wait_snapshot_holding(&store, 30).await;
    // Each stored snapshot is timed (the soak watches this as the state grows); the metric
    // is observed just after the object is stored.
    let timed = tokio::time::Instant::now() + Duration::from_secs(5);
    while producer
        .service
        .metric("producer_snapshot_seconds_count")
        .await
        < 1.0
    {
        assert!(
            tokio::time::Instant::now() < timed,
            "the snapshot was not timed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The tail: written after the snapshot, then a crash before the next one can be taken.
    let mut tail = Vec::new();
    for n in 30..35 {
        tail.push(writes.create(&format!("{topic}-k{n}"), n).await.1);
    }
    producer.service.kill();
    let mut stored = store.load().await.unwrap().unwrap();
    let covered = stored.products.len() as i64;
    producer.kill_and_restart().await;
    let writes = Writes {
        url: producer.service.url.clone(),
        ..writes
    };

    assert_eq!(
        producer.service.metric(REPLAYED).await as i64,
        35 - covered,
        "only the events after the snapshot are read from the log"
    );
    // A key answered before the snapshot and one answered in the tail: the same answers, and
    // nothing appended again.
    for (n, earlier) in [(3, &first[3]), (32, &tail[2])] {
        let (status, again) = writes.create(&format!("{topic}-k{n}"), n).await;
        assert_eq!((status, &again), (201, earlier), "retried key {n}");
    }
    // Versions continue from the snapshot's state and from the tail's.
    for product in [&first[5], &tail[1]] {
        let id = product["id"].as_str().unwrap();
        let (status, body) = writes.adjust(id, 1).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["version"], 2);
        let (status, _) = writes.adjust(id, 1).await;
        assert_eq!(status, 412, "version 1 is stale now");
    }

    // A snapshot that claims an event the log does not hold is not used.
    let partition = *stored.known_events.keys().next().unwrap();
    stored.known_events.get_mut(&partition).unwrap().1 = uuid::Uuid::new_v4();
    // Stop writes to the snapshot, then store the tampered one.
    producer.service.terminate();
    store.save(stored).await.unwrap();
    producer.kill_and_restart().await;
    assert_eq!(
        producer.service.metric(REPLAYED).await,
        37.0,
        "a snapshot that does not match the log is ignored: the whole log is read"
    );
    let writes = Writes {
        url: producer.service.url.clone(),
        ..writes
    };
    let (status, again) = writes.create(&format!("{topic}-k7"), 7).await;
    assert_eq!((status, &again), (201, &first[7]));
}

#[tokio::test]
async fn an_unreadable_snapshot_or_an_unreachable_s3_means_reading_the_whole_log() {
    let topic = foldline_testkit::unique("products");
    let mut producer = Restartable::producer(&topic).await;
    let writes = Writes {
        client: foldline_testkit::auth::client(),
        url: producer.service.url.clone(),
    };
    let mut first = Vec::new();
    for n in 0..10 {
        first.push(writes.create(&format!("{topic}-k{n}"), n).await.1);
    }
    // A graceful stop stores the last snapshot; then its object is overwritten with garbage.
    assert!(producer.service.terminate(), "graceful shutdown");
    let config = foldline_producer::Config::local().snapshot;
    wait_snapshot_holding(&snapshots(&topic).await, 10).await;
    foldline_service::aws::s3_client(&config.aws, &config.s3_endpoint)
        .await
        .put_object()
        .bucket(&config.snapshot_bucket)
        .key(format!("producer/{topic}.json.zst"))
        .body(b"not zstd, not json".to_vec().into())
        .send()
        .await
        .unwrap();
    producer.kill_and_restart().await;
    assert_eq!(
        producer.service.metric(REPLAYED).await,
        10.0,
        "an unreadable snapshot is ignored: the whole log is read"
    );
    let writes = Writes {
        url: producer.service.url.clone(),
        ..writes
    };
    assert_eq!(writes.create(&format!("{topic}-k4"), 4).await.1, first[4]);

    // S3 unreachable at start-up: the producer still starts, from the log alone.
    producer.service.terminate();
    let port = foldline_testkit::process::free_port();
    let without_s3 = foldline_testkit::process::Spawned::start(
        "foldline-producer",
        "FOLDLINE_PRODUCER_LISTEN",
        &[
            ("FOLDLINE_TOPIC", topic.clone()),
            (
                "FOLDLINE_TRANSACTIONAL_ID",
                foldline_testkit::unique("no-s3"),
            ),
            ("FOLDLINE_S3_ENDPOINT", format!("http://127.0.0.1:{port}")),
        ],
    )
    .await;
    assert_eq!(without_s3.metric(REPLAYED).await, 10.0);
    let writes = Writes {
        url: without_s3.url.clone(),
        ..writes
    };
    assert_eq!(writes.create(&format!("{topic}-k6"), 6).await.1, first[6]);
}
