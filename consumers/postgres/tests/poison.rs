//! Poison records (issue 25): events no write API would accept today, written straight into
//! the topic with a raw producer — a NUL in a name, price and stock of 2^62, a seller id of
//! 4,000 characters, a 500,000-character reason — each park their product in the consumer
//! whose store refuses them, while every other product flows and every consumer stays ready.
//! `foldline parked list|retry|drop` then shows them, applies them once fixed (exactly once,
//! in order) or gives them up.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Stack;
use foldline_schemas::wire::EventCodec;
use foldline_schemas::{Envelope, Payload, ProductCreated, ProductUpdated, StockAdjusted};
use foldline_testkit::process::{binary, Spawned};
use rand::distr::{Alphanumeric, SampleString};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use sqlx::Connection;

fn event(id: &str, version: i64, payload: Payload) -> Envelope {
    common::raw_event("raw-producer", id, version, payload)
}

fn created(name: &str, price_cents: i64, stock: i64, seller_id: &str) -> Payload {
    Payload::ProductCreated(ProductCreated {
        name: name.into(),
        price_cents,
        stock,
        seller_id: seller_id.into(),
        low_stock_threshold: None,
    })
}

/// Appends `events` to partition 0 of the topic, bypassing the producer and its limits.
async fn write_raw(topic: &str, events: &[Envelope]) {
    let codec = EventCodec::new(&foldline_testkit::registry_url(), topic).unwrap();
    let raw: FutureProducer =
        foldline_service::kafka::producer_config(&foldline_testkit::brokers(), "poison")
            .create()
            .unwrap();
    for event in events {
        let value = codec.encode(event).await.unwrap();
        raw.send(
            FutureRecord::to(topic)
                .key(&event.product_id)
                .payload(&value)
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
}

/// `foldline parked ARGS…` against the given consumers: (exit code, JSON lines of stdout).
fn parked_cli(consumers: &[&Spawned], args: &[&str]) -> (i32, Vec<Value>) {
    let urls: Vec<&str> = consumers.iter().map(|c| c.url.as_str()).collect();
    let output = std::process::Command::new(binary("foldline"))
        .arg("parked")
        .args(args)
        .args(["--consumers", &urls.join(",")])
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (output.status.code().unwrap_or(-1), lines)
}

/// (consumer URL, product id, version) of every parked entry.
fn listed(consumers: &[&Spawned]) -> BTreeSet<(String, String, i64)> {
    let (code, lines) = parked_cli(consumers, &["list"]);
    assert_eq!(code, 0);
    lines
        .iter()
        .map(|l| {
            (
                l["consumer"].as_str().unwrap().to_owned(),
                l["product_id"].as_str().unwrap().to_owned(),
                l["version"].as_i64().unwrap(),
            )
        })
        .collect()
}

async fn wait_for(mut check: impl AsyncFnMut() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reached in 90 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn poison_records_park_their_product_and_everything_else_flows() {
    let stack = Stack::start().await;
    let group = foldline_testkit::unique("poison");
    let projector = stack.projector(&group).await;
    let recent = stack.recent_events("Poison").await;
    projector.wait_ready(Duration::from_secs(60)).await;
    recent.wait_ready(Duration::from_secs(60)).await;

    // An operator's own rule, added to the live model: PostgreSQL refuses a product named
    // "blocked" until the rule is dropped again (the "fix" before a retry).
    let mut db = sqlx::PgConnection::connect(&stack.database_url)
        .await
        .unwrap();
    let schema: String = sqlx::query_scalar("SELECT schema_name FROM foldline_meta.active_model")
        .fetch_one(&mut db)
        .await
        .unwrap();
    sqlx::query(&format!(
        "ALTER TABLE {schema}.products ADD CONSTRAINT poison_test_blocked CHECK (name IS DISTINCT FROM 'blocked')"
    ))
    .execute(&mut db)
    .await
    .unwrap();

    stack.mixed_load(6, 20, 11).await;
    let id = |_: &str| uuid::Uuid::now_v7().to_string();
    let (nul, huge, long_seller, long_reason, blocked) = (
        id("nul"),
        id("huge"),
        id("long-seller"),
        id("long-reason"),
        id("blocked"),
    );
    let seller_4000 = Alphanumeric.sample_string(&mut rand::rng(), 4000);
    write_raw(
        &stack.topic,
        &[
            event(&nul, 1, created("lamp\0", 100, 10, "seller-0")),
            event(&huge, 1, created("huge", 1 << 62, 1 << 62, "seller-1")),
            event(&long_seller, 1, created("long", 1, 1, &seller_4000)),
            event(&long_reason, 1, created("fine", 250, 20, "seller-2")),
            event(
                &long_reason,
                2,
                Payload::StockAdjusted(StockAdjusted {
                    delta: -1,
                    new_stock: 19,
                    reason: Some("r".repeat(500_000)),
                    previous_stock: 20,
                }),
            ),
            event(&blocked, 1, created("blocked", 300, 30, "seller-2")),
            // Later events of parked products: parked behind the first, in order.
            event(
                &nul,
                2,
                Payload::StockAdjusted(StockAdjusted {
                    delta: -1,
                    new_stock: 9,
                    reason: None,
                    previous_stock: 10,
                }),
            ),
            event(
                &blocked,
                2,
                Payload::ProductUpdated(ProductUpdated {
                    name: None,
                    price_cents: Some(350),
                }),
            ),
        ],
    )
    .await;
    // Everything else keeps flowing after the poison.
    stack.mixed_load(6, 20, 12).await;

    stack
        .assert_model_equals_fold_without(&[&nul, &huge, &long_seller, &blocked])
        .await;
    assert_eq!(projector.metric("consumer_parked_products").await, 4.0);
    assert_eq!(projector.metric("consumer_parked_events_total").await, 6.0);
    projector.wait_ready(Duration::from_secs(1)).await;

    // DynamoDB refuses only the 500 KB item; every other event is there.
    wait_for(
        async || recent.metric("consumer_parked_products").await == 1.0,
        "the recent-events consumer parks the 500 KB reason",
    )
    .await;
    recent.wait_ready(Duration::from_secs(1)).await;

    let (p, r) = (projector.url.clone(), recent.url.clone());
    let expected: BTreeSet<(String, String, i64)> = [
        (p.clone(), nul.clone(), 1),
        (p.clone(), nul.clone(), 2),
        (p.clone(), huge.clone(), 1),
        (p.clone(), long_seller.clone(), 1),
        (p.clone(), blocked.clone(), 1),
        (p.clone(), blocked.clone(), 2),
        (r.clone(), long_reason.clone(), 2),
    ]
    .into();
    assert_eq!(listed(&[&projector, &recent]), expected);

    // Retried while still refused: stays parked, nothing applied.
    let (code, _) = parked_cli(&[&projector], &["retry", &blocked]);
    assert_eq!(code, 1, "still refused: exit 1");
    assert_eq!(stack.get(&format!("/products/{blocked}")).await.0, 404);

    // Fixed, then retried: both events applied, in order, once.
    sqlx::query(&format!(
        "ALTER TABLE {schema}.products DROP CONSTRAINT poison_test_blocked"
    ))
    .execute(&mut db)
    .await
    .unwrap();
    let (code, answers) = parked_cli(&[&projector, &recent], &["retry", &blocked]);
    assert_eq!(code, 0, "{answers:?}");
    assert_eq!(answers[0]["result"]["records"], 2);
    let (_, product) = stack.get(&format!("/products/{blocked}")).await;
    assert_eq!(
        (product["price_cents"].as_i64(), product["version"].as_i64()),
        (Some(350), Some(2))
    );

    // Dropped: forgotten, nothing applied.
    let (code, _) = parked_cli(&[&projector], &["drop", &nul]);
    assert_eq!(code, 0);
    let remaining = listed(&[&projector, &recent]);
    assert_eq!(remaining.len(), 3, "{remaining:?}");
    assert_eq!(projector.metric("consumer_parked_products").await, 2.0);

    // The model is the fold of every event but those still parked or dropped.
    let gone = [&nul, &huge, &long_seller];
    stack.assert_model_equals_fold_without(&gone).await;

    // A restart reads the parked products back: a later event of a parked product is still
    // set aside, and the rest flows.
    drop(projector);
    let projector = stack.projector(&group).await;
    write_raw(
        &stack.topic,
        &[event(
            &huge,
            2,
            Payload::ProductUpdated(ProductUpdated {
                name: Some("still huge".into()),
                price_cents: None,
            }),
        )],
    )
    .await;
    stack.mixed_load(3, 5, 13).await;
    stack.assert_model_equals_fold_without(&gone).await;
    assert!(listed(&[&projector]).contains(&(projector.url.clone(), huge.clone(), 2)));
    projector.wait_ready(Duration::from_secs(1)).await;

    // A rebuild from the log parks the same records again (a drop gives records up in one
    // model, not in the log): the new model holds what the live one held, and the live
    // projector, moved to it, reads its parked products from it.
    let output = tokio::process::Command::new(binary("foldline-projector"))
        .args(["replay", "--drop-grace-ms", "500"])
        .envs(
            stack
                .projector_env(&group)
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone())),
        )
        .env(
            "FOLDLINE_PROJECTOR_LISTEN",
            format!("127.0.0.1:{}", foldline_testkit::process::free_port()),
        )
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(printed.contains("3 products parked"), "{printed}");
    // The bulk load cannot park: PostgreSQL's refusal sends it back to batches, from the start.
    assert!(
        printed.contains("written batch by batch: PostgreSQL refused"),
        "{printed}"
    );
    // The live projector knows the new model's parked products: a later event of the product
    // parked again by the rebuild is set aside, not applied on top of nothing.
    write_raw(
        &stack.topic,
        &[event(
            &nul,
            3,
            Payload::ProductUpdated(ProductUpdated {
                name: Some("fixed".into()),
                price_cents: None,
            }),
        )],
    )
    .await;
    stack.mixed_load(2, 2, 15).await;
    stack.assert_model_equals_fold_without(&gone).await;
    assert_eq!(stack.get(&format!("/products/{nul}")).await.0, 404);
    let after_rebuild = listed(&[&projector]);
    assert!(
        after_rebuild.contains(&(projector.url.clone(), nul.clone(), 3)),
        "{after_rebuild:?}"
    );
    assert_eq!(after_rebuild.len(), 6, "{after_rebuild:?}");
}

/// A product's event whose version does not grow (an older version appended again, around
/// the API) is a no-op for the projector; a rebuild's bulk load cannot tell such a record
/// from a gap, so it rebuilds batch by batch instead, says why, and still swaps in a model
/// equal to the live one.
#[tokio::test]
async fn a_rebuild_of_a_log_whose_versions_do_not_grow_falls_back_to_batches() {
    let stack = Stack::start().await;
    let group = foldline_testkit::unique("g");
    let projector = stack.projector(&group).await;
    stack.mixed_load(5, 10, 21).await;
    let id = foldline_testkit::unique("again");
    write_raw(
        &stack.topic,
        &[
            event(&id, 1, created("Lamp", 100, 7, "s1")),
            event(
                &id,
                2,
                Payload::ProductUpdated(ProductUpdated {
                    name: Some("Lamp v2".into()),
                    price_cents: None,
                }),
            ),
            event(&id, 1, created("Lamp again", 300, 9, "s1")),
        ],
    )
    .await;
    // And a record nothing can decode: counted once, though both passes read it.
    let raw: FutureProducer =
        foldline_service::kafka::producer_config(&foldline_testkit::brokers(), "poison")
            .create()
            .unwrap();
    raw.send(
        FutureRecord::to(&stack.topic)
            .key("garbage")
            .payload(&b"not avro"[..])
            .partition(0),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let events = stack.topic_events().await;
    stack.wait_caught_up(events.len()).await;
    let output = stack.replay(&group, &["--json"], &[]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["fell_back"].as_str(),
        Some(format!("product {id:?}: version 1 follows version 2").as_str()),
        "{report}"
    );
    assert_eq!(report["undecodable"], 1, "{report}");
    assert_eq!(report["events"], events.len(), "{report}");
    let (status, body) = stack.get(&format!("/products/{id}")).await;
    assert_eq!((status, body["name"].as_str()), (200, Some("Lamp v2")));
    drop(projector);
}
