//! The first schema change (issue 38): products written under the previous schema (no
//! `previous_stock`, no own threshold) and changed under the current one read in the current
//! shape on every path — the producer's tail read, the projector, the query API's product,
//! history and as-of, the recent events, `foldline topic consume`, `foldline verify` and a
//! rebuild — and the new feature (a product's own low-stock threshold) works end to end.

mod common;

use std::time::Duration;

use common::Stack;
use foldline_schemas::{Envelope, Payload, ProductCreated, StockAdjusted};
use foldline_testkit::future_schema;
use foldline_testkit::process::{binary, Spawned};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::Method;
use serde_json::{json, Value};

fn event(id: &str, version: i64, payload: Payload) -> Envelope {
    common::raw_event("old-writer", id, version, payload)
}

#[tokio::test]
async fn a_product_written_before_the_change_and_changed_after_reads_the_same_everywhere() {
    // Before the change: the previous schema registered and written with, as the previous
    // release's producer did (its partition: the producer hashes keys the same way).
    let database_url = foldline_testkit::postgres::fresh_database().await;
    let topic = foldline_testkit::unique("products");
    let dlq = format!("{topic}.dlq");
    for name in [&topic, &dlq] {
        foldline_service::kafka::ensure_topic(&foldline_testkit::brokers(), name, 1, &[])
            .await
            .unwrap();
    }
    let old_id = future_schema::register_json(&topic, &future_schema::previous_schema_json()).await;
    let product = uuid::Uuid::now_v7().to_string();
    let created = Payload::ProductCreated(ProductCreated {
        name: "Old lamp".into(),
        price_cents: 1_000,
        stock: 10,
        seller_id: "seller-old".into(),
        low_stock_threshold: None,
    });
    let sold = Payload::StockAdjusted(StockAdjusted {
        delta: -3,
        new_stock: 7,
        reason: Some("sold".into()),
        previous_stock: 10,
    });
    let raw: FutureProducer =
        foldline_service::kafka::producer_config(&foldline_testkit::brokers(), "old-writer")
            .create()
            .unwrap();
    for old in [event(&product, 1, created), event(&product, 2, sold)] {
        let bytes = future_schema::encode_previous(old_id, &old);
        raw.send(
            FutureRecord::to(&topic).key(&product).payload(&bytes),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }

    // After the change: the current binaries, started on that log.
    let table = foldline_testkit::unique("VersionsRecentEvents");
    let producer = Spawned::producer(&topic).await;
    let query = Spawned::start(
        "foldline-query",
        "FOLDLINE_QUERY_LISTEN",
        &[
            ("FOLDLINE_DATABASE_URL", database_url.clone()),
            ("FOLDLINE_TOPIC", topic.clone()),
            ("FOLDLINE_RECENT_EVENTS_TABLE", table.clone()),
        ],
    )
    .await;
    let recent = Spawned::start(
        "foldline-recent-events",
        "FOLDLINE_RECENT_EVENTS_LISTEN",
        &[
            ("FOLDLINE_TOPIC", topic.clone()),
            ("FOLDLINE_DLQ_TOPIC", dlq.clone()),
            ("FOLDLINE_RECENT_EVENTS_TABLE", table),
            (
                "FOLDLINE_RECENT_EVENTS_GROUP",
                foldline_testkit::unique("versions-recent"),
            ),
        ],
    )
    .await;
    let stack = Stack {
        database_url,
        topic,
        dlq,
        producer,
        query,
        http: foldline_testkit::auth::client(),
    };
    let group = foldline_testkit::unique("versions");
    let projector = stack.projector(&group).await;
    projector.wait_ready(Duration::from_secs(60)).await;
    recent.wait_ready(Duration::from_secs(60)).await;

    // The producer's state came from the old records (its tail read): stock 7.
    let set = stack
        .write(
            Method::PUT,
            &format!("/products/{product}/low-stock-threshold"),
            json!({"threshold": 8}),
        )
        .await;
    assert_eq!(set["status"], 200, "{set}");
    assert_eq!(
        set["body"]["version"], 4,
        "the threshold and a warning: {set}"
    );
    let sale = stack
        .write(
            Method::POST,
            &format!("/products/{product}/stock"),
            json!({"delta": -1}),
        )
        .await;
    assert_eq!(sale["body"]["version"], 5, "{sale}");
    let too_high = stack
        .write(
            Method::PUT,
            &format!("/products/{product}/low-stock-threshold"),
            json!({"threshold": 10_000_001}),
        )
        .await;
    assert_eq!(too_high["status"], 422, "{too_high}");
    assert!(too_high["body"]["detail"]
        .as_str()
        .unwrap()
        .contains("low_stock_threshold"));
    let created_with = stack
        .write(
            Method::POST,
            "/products",
            json!({"name": "New lamp", "price_cents": 500, "stock": 3, "seller_id": "seller-old",
                   "low_stock_threshold": 2}),
        )
        .await;
    assert_eq!(created_with["status"], 201, "{created_with}");
    let new_id = created_with["body"]["id"].as_str().unwrap().to_owned();

    // Every event read back in the current shape, old ones upcast: the model equals the
    // fold of the topic (product rows with their threshold, seller stats by each product's
    // own threshold, histories with `previous_stock`).
    let events = stack.topic_events().await;
    assert_eq!(
        events.len(),
        6,
        "2 old + set, warning, sale + create: {events:#?}"
    );
    let Payload::StockAdjusted(old_sale) = &events[1].payload else {
        panic!("{:?}", events[1])
    };
    assert_eq!(old_sale.previous_stock, 10, "upcast: new_stock - delta");
    stack.wait_caught_up(events.len()).await;
    stack.assert_model_equals_fold(&events).await;

    let (_, now) = stack.get(&format!("/products/{product}")).await;
    assert_eq!(
        (now["stock"].clone(), now["low_stock_threshold"].clone()),
        (json!(6), json!(8))
    );
    let (_, stats) = stack.get("/sellers/seller-old/stats").await;
    assert_eq!(
        stats["low_stock_products"], 1,
        "6 is low under its own 8 (not under the default 5); the new lamp's 3 is not under its 2: {stats}"
    );
    let (_, history) = stack.get(&format!("/products/{product}/history")).await;
    let types: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "ProductCreated",
            "StockAdjusted",
            "LowStockThresholdSet",
            "LowStockWarning",
            "StockAdjusted"
        ]
    );
    assert_eq!(history["events"][1]["payload"]["previous_stock"], 10);
    assert_eq!(history["events"][4]["payload"]["previous_stock"], 7);
    let as_of = history["events"][1]["position"].as_str().unwrap();
    let (status, then) = stack
        .get(&format!("/products/{product}?as_of={as_of}"))
        .await;
    assert_eq!(status, 200, "{then}");
    assert_eq!(
        (then["stock"].clone(), then["low_stock_threshold"].clone()),
        (json!(7), Value::Null)
    );
    let (status, _) = stack.get(&format!("/products/{new_id}")).await;
    assert_eq!(status, 200);

    // The recent events (DynamoDB) serve the old sale upcast too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let recent_sale = loop {
        let (status, page) = stack
            .get(&format!("/products/{product}/events?limit=20"))
            .await;
        let found = page["items"]
            .as_array()
            .and_then(|events| events.iter().find(|e| e["version"] == 2).cloned());
        match found {
            Some(found) => break found,
            None if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(300)).await
            }
            None => panic!("no recent event v2 ({status}): {page}"),
        }
    };
    assert_eq!(
        recent_sale["payload"]["previous_stock"], 10,
        "{recent_sale}"
    );

    // The CLI's consume shows it in the current shape.
    let consumed = std::process::Command::new(binary("foldline"))
        .args(["topic", "consume", &stack.topic])
        .output()
        .unwrap();
    let lines: Vec<Value> = String::from_utf8_lossy(&consumed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[1]["value"]["payload"]["previous_stock"], 10);

    // verify, and a rebuild across the mixed history that compares equal.
    let (code, printed) = stack.verify(&group, &["--only", "postgres", "--json"], &[]);
    assert_eq!(code, Some(0), "{printed}");
    let report: Value = serde_json::from_str(&printed).expect("verify --json prints one object");
    assert_eq!(report["differences"], 0, "{printed}");
    assert!(
        report["events"].as_u64() >= Some(events.len() as u64),
        "{printed}"
    );
    let rebuilt = stack.replay(&group, &[], &[]).await;
    let printed = String::from_utf8_lossy(&rebuilt.stderr).into_owned()
        + &String::from_utf8_lossy(&rebuilt.stdout);
    assert!(rebuilt.status.success(), "{printed}");
    stack.assert_model_equals_fold(&events).await;
    drop(recent);
}
