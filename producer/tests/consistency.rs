//! Concurrency, idempotency, restarts and a broker crash, on the real stack.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{assert_gap_free, read_topic, Producer};
use serde_json::{json, Value};

#[tokio::test]
async fn fifty_concurrent_decrements_on_stock_20_give_20_successes_and_30_conflicts() {
    let config = common::config();
    let topic = config.log.topic.clone();
    let producer = Producer::start(config).await;
    let id = producer.create(20).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let request = producer.post(&format!("/products/{id}/stock"), json!({"delta": -1}));
        tasks.push(tokio::spawn(async move {
            request.send().await.unwrap().status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        20,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        30,
        "{statuses:?}"
    );

    let events = read_topic(&foldline_testkit::brokers(), &topic).await;
    let last = common::assert_gap_free(&events);
    // created + 20 adjustments + 1 low-stock warning (5 -> 4)
    assert_eq!(last[&id], 22);
    let final_stock = events
        .iter()
        .filter_map(|(e, _, _)| match &e.payload {
            foldline_schemas::Payload::StockAdjusted(s) => Some((e.version, s.new_stock)),
            _ => None,
        })
        .max()
        .unwrap()
        .1;
    assert_eq!(final_stock, 0);
    producer.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_appends_once_also_after_a_restart() {
    let config = common::config();
    let topic = config.log.topic.clone();
    let producer = Producer::start(config.clone()).await;
    let id = producer.create(10).await;
    let send = |url: String| {
        let id = id.clone();
        async move {
            let response = foldline_testkit::auth::client()
                .post(format!("{url}/products/{id}/stock"))
                .header("idempotency-key", "order-42")
                .json(&json!({"delta": -1}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let first = send(producer.url.clone()).await;
    let again = send(producer.url.clone()).await;
    assert_eq!(first, again);
    producer.stop().await;

    let restarted = Producer::start(config).await;
    let after_restart = send(restarted.url.clone()).await;
    assert_eq!(first, after_restart);
    // Batch keys are answered per command, also rebuilt from the log.
    let batch = json!({"commands": [
        {"op": "adjust_stock", "id": id, "delta": 2},
        {"op": "update", "id": id, "name": "Renamed"}
    ]});
    let post_batch = |url: String| {
        let batch = batch.clone();
        async move {
            foldline_testkit::auth::client()
                .post(format!("{url}/commands"))
                .header("idempotency-key", "batch-7")
                .json(&batch)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let batch_first = post_batch(restarted.url.clone()).await;
    restarted.stop().await;
    let third = Producer::start({
        let mut c = common::config();
        c.log.topic = topic.clone();
        c
    })
    .await;
    assert_eq!(
        post_batch(third.url.clone()).await["results"],
        batch_first["results"]
    );
    third.stop().await;

    let events = read_topic(&foldline_testkit::brokers(), &topic).await;
    assert_eq!(
        events.len(),
        1 + 1 + 2,
        "create, one adjustment, one batch of two"
    );
}

#[tokio::test]
async fn a_restart_keeps_all_state() {
    let config = common::config();
    let producer = Producer::start(config.clone()).await;
    let id = producer.create(3).await;
    let response = producer
        .post(&format!("/products/{id}/stock"), json!({"delta": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    producer.stop().await;

    let restarted = Producer::start(config).await;
    // Stock is 7 and the version 2: -8 conflicts, If-Match "2" passes, -7 empties it.
    let response = restarted
        .post(&format!("/products/{id}/stock"), json!({"delta": -8}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let response = restarted
        .post(&format!("/products/{id}/stock"), json!({"delta": -7}))
        .header("if-match", "\"2\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_crash_mid_load_gives_503s_and_loses_no_acknowledged_write() {
    let mut broker = foldline_testkit::OwnBroker::start();
    let mut config = common::config();
    config.log.brokers = broker.brokers();
    config.request_timeout_ms = 20_000;
    let topic = config.log.topic.clone();
    let producer = Producer::start(config).await;
    let url = producer.url.clone();

    let load = tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(25))
            .build()
            .unwrap();
        let mut acknowledged = Vec::new();
        let mut statuses = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(35);
        let mut n = 0;
        while tokio::time::Instant::now() < deadline {
            n += 1;
            let response = client
                .post(format!("{url}/products"))
                .bearer_auth(foldline_testkit::auth::admin_token())
                .json(&json!({"name": format!("item {n}"), "price_cents": 1, "stock": 1, "seller_id": "s"}))
                .send()
                .await;
            match response {
                Ok(r) => {
                    statuses.push(r.status().as_u16());
                    if r.status() == 201 {
                        let body: Value = r.json().await.unwrap();
                        acknowledged.push(body["id"].as_str().unwrap().to_owned());
                    }
                }
                Err(_) => statuses.push(0),
            }
        }
        (acknowledged, statuses)
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.kill();
    // Longer than the producer's 10 s delivery and commit timeouts, so in-flight writes fail
    // (a shorter outage is simply ridden out by librdkafka's retries).
    tokio::time::sleep(Duration::from_secs(14)).await;
    broker.resume();
    let (acknowledged, statuses) = load.await.unwrap();
    assert!(
        statuses.contains(&503),
        "the outage must show as 503s: {statuses:?}"
    );
    assert!(
        acknowledged.len() > 10,
        "writes before the crash were acknowledged"
    );
    // Readiness returns once the producer re-initialised and re-read the log; a transaction
    // left open by the crash can hold read_committed readers until the broker decides it.
    producer.wait_ready(Duration::from_secs(120)).await;
    let response = foldline_testkit::auth::client()
        .post(format!("{}/products", producer.url))
        .json(&json!({"name": "after", "price_cents": 1, "stock": 1, "seller_id": "s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        201,
        "writes work again after the broker is back"
    );

    let events = read_topic(&broker.brokers(), &topic).await;
    let logged: HashSet<String> = events
        .iter()
        .map(|(e, _, _)| e.product_id.clone())
        .collect();
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !logged.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not in the log: {missing:?}"
    );
    common::assert_gap_free(&events);
    producer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_instance_with_the_same_transactional_id_fences_the_first() {
    let config = common::config();
    let topic = config.log.topic.clone();
    let first = Producer::start(config.clone()).await;
    let id = first.create(10).await;

    // The second instance (same transactional.id) takes over the producer epoch.
    let second = Producer::start(config).await;
    let response = first
        .post(&format!("/products/{id}/stock"), json!({"delta": -1}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        503,
        "the fenced instance must refuse writes"
    );
    let ready = reqwest::get(format!("{}/ready", first.url)).await.unwrap();
    assert_eq!(ready.status(), 503, "a fenced instance is not ready");

    let response = second
        .post(&format!("/products/{id}/stock"), json!({"delta": -1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["version"], 2,
        "the new instance folded the first one's write"
    );
    first.stop().await;
    second.stop().await;

    let events = read_topic(&foldline_testkit::brokers(), &topic).await;
    assert_eq!(
        events.len(),
        2,
        "the create and the new instance's adjustment, nothing else"
    );
    assert_gap_free(&events);
}

/// A client that gives up mid-request (its connection closes, as when a forwarding instance
/// dies) must not leave the command half-known: if its events were committed, the retry with
/// the same key answers the first answer and appends nothing. The clients here give up after
/// 1 to 128 ms, so some of them close while their batch is with the committer.
#[tokio::test]
async fn a_client_that_gives_up_mid_commit_still_gets_its_command_once() {
    let config = common::config();
    let topic = config.log.topic.clone();
    let producer = Producer::start(config).await;
    let batch = json!({"commands": (0..500).map(|_| json!(
        {"op": "create", "name": "Lamp", "price_cents": 1, "stock": 1, "seller_id": "s1"}
    )).collect::<Vec<_>>()});
    let mut keys = Vec::new();
    for (n, give_up_ms) in [1, 2, 4, 8, 16, 32, 64, 128].into_iter().enumerate() {
        let key = format!("impatient-{n}");
        let impatient = foldline_testkit::auth::client()
            .post(format!("{}/commands", producer.url))
            .header("idempotency-key", &key)
            .json(&batch)
            .timeout(Duration::from_millis(give_up_ms))
            .send()
            .await;
        let answered = impatient.is_ok_and(|r| r.status() == 200);
        // The retry, patiently.
        let retry = foldline_testkit::auth::client()
            .post(format!("{}/commands", producer.url))
            .header("idempotency-key", &key)
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(
            retry.status(),
            200,
            "{key} (first try answered: {answered})"
        );
        keys.push(key);
    }
    let events = read_topic(&foldline_testkit::brokers(), &topic).await;
    for key in &keys {
        let appended = events
            .iter()
            .filter(|(e, _, _)| e.idempotency_key.as_deref() == Some(key.as_str()))
            .count();
        assert_eq!(
            appended, 500,
            "{key}: each of its 500 creates appended once"
        );
    }
    producer.stop().await;
}
