//! The recent-events consumer on a real DynamoDB API (dynoxide, started by scripts/test).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, TimeToLiveStatus};
use foldline_service::aws::AwsEndpoint;
use foldline_testkit::process::Spawned;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

fn endpoint() -> String {
    std::env::var("FOLDLINE_DYNAMODB_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:8000".into())
}

async fn client() -> aws_sdk_dynamodb::Client {
    foldline_recent_events::DynamoDb {
        aws: AwsEndpoint {
            region: "us-east-1".into(),
            local_access_key: "foldline".into(),
            local_secret_key: "foldline-secret".into(),
        },
        dynamodb_endpoint: endpoint(),
    }
    .client()
    .await
}

/// Every item of the table, as sorted text, so two scans compare exactly.
async fn scan(client: &aws_sdk_dynamodb::Client, table: &str) -> BTreeSet<String> {
    let mut items = BTreeSet::new();
    let mut pages = client.scan().table_name(table).into_paginator().send();
    while let Some(page) = pages.next().await {
        for item in page.unwrap().items() {
            let sorted: BTreeMap<_, _> = item.iter().collect();
            items.insert(format!("{sorted:?}"));
        }
    }
    items
}

async fn wait_for_items(client: &aws_sdk_dynamodb::Client, table: &str, want: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let got = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .ok()
            .map(|_| ());
        if got.is_some() && scan(client, table).await.len() >= want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than {want} items"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Sets the group's committed offsets back to 0 on every partition (the group is empty).
fn reset_group(group: &str, topic: &str) {
    let consumer: BaseConsumer =
        foldline_service::kafka::base_config(&foldline_testkit::brokers(), "test-reset")
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
    let mut offsets = TopicPartitionList::new();
    for partition in 0..3 {
        offsets
            .add_partition_offset(topic, partition, Offset::Offset(0))
            .unwrap();
    }
    consumer.commit(&offsets, CommitMode::Sync).unwrap();
}

#[tokio::test]
async fn every_event_becomes_two_items_and_a_redelivery_adds_no_duplicate() {
    let topic = foldline_testkit::unique("recent");
    let table = foldline_testkit::unique("RecentEvents");
    let group = format!("{topic}-recent");
    let producer = Spawned::producer(&topic).await;
    let http = foldline_testkit::auth::client();
    let mut versions: BTreeMap<String, i64> = BTreeMap::new();
    for round in 0..6 {
        let mut commands: Vec<serde_json::Value> = (0..4)
            .map(|i| {
                json!({"op": "create", "name": format!("n{round}-{i}"), "price_cents": 5,
                           "stock": 6, "seller_id": "s-1"})
            })
            .collect();
        commands.extend(
            versions
                .keys()
                .take(4)
                .map(|id| json!({"op": "adjust_stock", "id": id, "delta": -1})),
        );
        let answer = foldline_testkit::writes::post_commands(&http, &producer.url, &commands).await;
        for result in answer["results"].as_array().unwrap() {
            versions.insert(
                result["id"].as_str().unwrap().to_owned(),
                result["version"].as_i64().unwrap(),
            );
        }
    }
    let events = foldline_testkit::read_all(&foldline_testkit::brokers(), &topic)
        .await
        .len();
    let env = vec![
        ("FOLDLINE_TOPIC", topic.clone()),
        ("FOLDLINE_DLQ_TOPIC", format!("{topic}.dlq")),
        ("FOLDLINE_DYNAMODB_ENDPOINT", endpoint()),
        ("FOLDLINE_RECENT_EVENTS_TABLE", table.clone()),
        ("FOLDLINE_RECENT_EVENTS_GROUP", group.clone()),
        // Small batches: several BatchWriteItem rounds per batch and several batches.
        ("FOLDLINE_BATCH_RECORDS", "30".into()),
    ];
    let mut consumer = Spawned::start(
        "foldline-recent-events",
        "FOLDLINE_RECENT_EVENTS_LISTEN",
        &env,
    )
    .await;
    let client = client().await;
    wait_for_items(&client, &table, 2 * events).await;
    let first = scan(&client, &table).await;
    assert_eq!(
        first.len(),
        2 * events,
        "one item per product and one per day, per event"
    );

    let ttl = client
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    assert_eq!(
        ttl.time_to_live_description()
            .and_then(|d| d.time_to_live_status()),
        Some(&TimeToLiveStatus::Enabled)
    );
    for (id, version) in &versions {
        let items = client
            .query()
            .table_name(&table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(format!("product#{id}")))
            .send()
            .await
            .unwrap();
        let got: Vec<i64> = items
            .items()
            .iter()
            .map(|i| i["version"].as_n().unwrap().parse().unwrap())
            .collect();
        let expected: Vec<i64> = (1..=*version).collect();
        assert_eq!(got, expected, "product {id}: every event, in time order");
    }

    // The query API serves them back, newest first (the live page's product panel).
    let query = Spawned::start(
        "foldline-query",
        "FOLDLINE_QUERY_LISTEN",
        &[
            ("FOLDLINE_TOPIC", topic.clone()),
            ("FOLDLINE_DYNAMODB_ENDPOINT", endpoint()),
            ("FOLDLINE_RECENT_EVENTS_TABLE", table.clone()),
        ],
    )
    .await;
    let (id, version) = versions.iter().max_by_key(|(_, v)| **v).unwrap();
    let answer: serde_json::Value = foldline_testkit::get_json(
        &http,
        &format!("{}/products/{id}/events?limit=2", query.url),
    )
    .await;
    let items = answer["items"].as_array().unwrap();
    let got: Vec<i64> = items
        .iter()
        .map(|e| e["version"].as_i64().unwrap())
        .collect();
    assert_eq!(
        got,
        vec![*version, version - 1],
        "the last two, newest first: {answer}"
    );
    assert_eq!(items[0]["product_id"], id.as_str());
    assert!(items[0]["position"].as_str().unwrap().contains(':'));
    assert_eq!(items[0]["event_type"], "StockAdjusted");
    assert!(items[0]["payload"]["new_stock"].is_i64(), "{answer}");
    assert!(
        items[0]["occurred_at"].is_i64(),
        "epoch milliseconds, as on the SSE stream: {answer}"
    );
    let none: serde_json::Value = foldline_testkit::get_json(
        &http,
        &format!("{}/products/no-such-product/events", query.url),
    )
    .await;
    assert_eq!(none["items"], json!([]));
    let bad = http
        .get(format!("{}/products/{id}/events?limit=0", query.url))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // DynamoDB unreachable: a clear 503 problem, not a hang or an empty answer.
    let unreachable = Spawned::start(
        "foldline-query",
        "FOLDLINE_QUERY_LISTEN",
        &[
            ("FOLDLINE_TOPIC", topic.clone()),
            ("FOLDLINE_DYNAMODB_ENDPOINT", "http://127.0.0.1:9".into()),
            ("FOLDLINE_RECENT_EVENTS_TABLE", table.clone()),
        ],
    )
    .await;
    let down = http
        .get(format!("{}/products/{id}/events", unreachable.url))
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), 503);
    let problem: serde_json::Value = down.json().await.unwrap();
    assert_eq!(
        problem["type"]
            .as_str()
            .map(|t| t.ends_with("recent-events-unavailable")),
        Some(true),
        "{problem}"
    );

    // Redelivery: stop, reset the group to offset 0, start again: everything is written again.
    assert!(consumer.terminate(), "graceful shutdown");
    reset_group(&group, &topic);
    let consumer = Spawned::start(
        "foldline-recent-events",
        "FOLDLINE_RECENT_EVENTS_LISTEN",
        &env,
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while consumer.metric("consumer_events_total").await < events as f64 {
        assert!(tokio::time::Instant::now() < deadline, "not redelivered");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        consumer.metric("dynamodb_items_written_total").await,
        (2 * events) as f64,
        "every item was written again"
    );
    assert_eq!(
        scan(&client, &table).await,
        first,
        "and the table is the same"
    );
}
