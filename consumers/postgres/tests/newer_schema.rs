//! Records written by a newer schema than the consumers under test know (issue 38): a new
//! event type, and a field they do not know holding a value. Neither is dropped nor
//! dead-lettered: each consumer that parks parks the product with "written by a newer
//! schema", every other product flows, a retry before the upgrade leaves it parked, and
//! `foldline topic consume` shows the event as written. (That an upgraded build then reads
//! and applies it is what `scripts/upgrade-drill` shows across two real builds.)

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Stack;
use foldline_schemas::wire::EventCodec;
use foldline_schemas::{Envelope, Payload, ProductCreated, StockAdjusted};
use foldline_testkit::future_schema::{self, Future};
use foldline_testkit::process::{binary, Spawned};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

fn event(id: &str, version: i64, payload: Payload) -> Envelope {
    common::raw_event("future-writer", id, version, payload)
}

fn created(name: &str) -> Payload {
    Payload::ProductCreated(ProductCreated {
        name: name.into(),
        price_cents: 100,
        stock: 10,
        seller_id: "seller-n".into(),
        low_stock_threshold: None,
    })
}

fn foldline(args: &[&str]) -> (i32, String) {
    let output = std::process::Command::new(binary("foldline"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

/// (product, version, reason) of every entry `consumer` keeps parked.
fn parked(consumer: &Spawned) -> BTreeSet<(String, i64, String)> {
    let (code, out) = foldline(&["parked", "list", "--consumers", &consumer.url]);
    assert_eq!(code, 0, "{out}");
    out.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|l| {
            (
                l["product_id"].as_str().unwrap().to_owned(),
                l["version"].as_i64().unwrap(),
                l["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn events_of_a_newer_schema_park_their_product_and_are_never_dropped() {
    let stack = Stack::start().await;
    let projector = stack.projector(&foldline_testkit::unique("newer")).await;
    let recent = stack.recent_events("Newer").await;
    projector.wait_ready(Duration::from_secs(60)).await;
    recent.wait_ready(Duration::from_secs(60)).await;

    let schema_id = future_schema::register(&stack.topic).await;
    let codec = EventCodec::new(&foldline_testkit::registry_url(), &stack.topic).unwrap();
    let id = || uuid::Uuid::now_v7().to_string();
    let (typed, fielded, plain) = (id(), id(), id());
    let adjusted = Payload::StockAdjusted(StockAdjusted {
        delta: -1,
        new_stock: 9,
        reason: None,
        previous_stock: 10,
    });
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for (event, future) in [
        (event(&typed, 1, created("typed")), None),
        (
            event(&typed, 2, created("ignored")),
            Some(Future::NewType("from the future".into())),
        ),
        (event(&typed, 3, adjusted.clone()), None),
        (
            event(&fielded, 1, created("fielded")),
            Some(Future::NewField(true)),
        ),
        (event(&plain, 1, created("plain")), None),
        (event(&plain, 2, adjusted), None),
    ] {
        let bytes = match future {
            None => codec.encode(&event).await.unwrap(),
            Some(future) => future_schema::encode(schema_id, &event, &future),
        };
        records.push((event.product_id.clone(), bytes));
    }
    let raw: FutureProducer =
        foldline_service::kafka::producer_config(&foldline_testkit::brokers(), "newer")
            .create()
            .unwrap();
    for (key, value) in &records {
        raw.send(
            FutureRecord::to(&stack.topic)
                .key(key)
                .payload(value)
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }

    // Every other product flows; the product itself stands at its last readable event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (status, body) = stack.get(&format!("/products/{plain}")).await;
        if status == 200 && body["version"] == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{plain}: {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (status, body) = stack.get(&format!("/products/{typed}")).await;
    assert_eq!((status, body["version"].clone()), (200, 1.into()), "{body}");
    let (status, _) = stack.get(&format!("/products/{fielded}")).await;
    assert_eq!(status, 404, "not applied without its field");

    let reason = format!("written by a newer schema (id {schema_id})");
    for consumer in [&projector, &recent] {
        let mut entries = parked(consumer);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while entries.len() < 3 {
            assert!(tokio::time::Instant::now() < deadline, "{entries:?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
            entries = parked(consumer);
        }
        let versions: Vec<(&str, i64)> = entries.iter().map(|(p, v, _)| (p.as_str(), *v)).collect();
        let mut expected = vec![
            (typed.as_str(), 2),
            (typed.as_str(), 3),
            (fielded.as_str(), 1),
        ];
        expected.sort();
        assert_eq!(versions, expected, "{}", consumer.url);
        for (product, version, why) in &entries {
            if (product, *version) == (&typed, 2) {
                assert!(why.starts_with(&reason), "{why}");
                assert!(why.contains("event type `FutureEvent`"), "{why}");
            }
            if product == &fielded {
                assert!(
                    why.contains("field `gift_wrap` of `ProductCreated`"),
                    "{why}"
                );
            }
        }
        consumer.wait_ready(Duration::from_secs(1)).await;
    }
    let (code, out) = foldline(&["topic", "consume", &stack.dlq]);
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.lines().any(|l| l.starts_with('{')),
        "not a dead letter: {out}"
    );

    // A retry before the upgrade cannot read it: the product stays parked.
    let (code, out) = foldline(&["parked", "retry", &typed, "--consumers", &projector.url]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("newer schema"), "{out}");
    assert_eq!(parked(&projector).len(), 3);

    // The CLI shows the event as written, with a note.
    let (code, out) = foldline(&["topic", "consume", &stack.topic]);
    assert_eq!(code, 0, "{out}");
    let future_line: Value = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["value"]["event_type"] == "FutureEvent")
        .unwrap_or_else(|| panic!("no FutureEvent line in {out}"));
    assert_eq!(future_line["value"]["payload"]["note"], "from the future");
    assert_eq!(future_line["value"]["product_id"], typed.as_str());
    assert!(future_line["value_note"]
        .as_str()
        .unwrap()
        .starts_with("written by a newer schema"));
}
