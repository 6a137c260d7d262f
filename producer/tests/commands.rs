//! Each command and each error status, on the real broker and registry.

mod common;

use common::{read_topic, Producer};
use foldline_schemas::EventType;
use serde_json::{json, Value};

#[tokio::test]
async fn every_command_succeeds_with_id_version_position_and_etag() {
    let config = common::config();
    let topic = config.log.topic.clone();
    let producer = Producer::start(config).await;
    let client = foldline_testkit::auth::client();

    let created = producer
        .post(
            "/products",
            json!({"name": "Desk", "price_cents": 12500, "stock": 6, "seller_id": "s1"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id_location = created.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(created.headers()["etag"], "\"1\"");
    let body: Value = created.json().await.unwrap();
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(id_location, format!("/products/{id}"));
    assert_eq!(body["version"], 1);
    assert!(body["position"].as_str().unwrap().contains(':'));

    let updated = client
        .patch(format!("{}/products/{id}", producer.url))
        .header("if-match", "\"1\"")
        .json(&json!({"price_cents": 9900}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    assert_eq!(updated.headers()["etag"], "\"2\"");

    // 6 -> 4 crosses the threshold of 5: StockAdjusted and LowStockWarning, answered as v4.
    let adjusted = producer
        .post(
            &format!("/products/{id}/stock"),
            json!({"delta": -2, "reason": "sold"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(adjusted.status(), 200);
    let body: Value = adjusted.json().await.unwrap();
    assert_eq!(body["version"], 4);

    let deleted = client
        .delete(format!("{}/products/{id}", producer.url))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);

    let batch = producer
        .post(
            "/commands",
            json!({"commands": [
                {"op": "create", "name": "Chair", "price_cents": 5000, "stock": 10, "seller_id": "s2"},
                {"op": "create", "name": "Table", "price_cents": 9000, "stock": 3, "seller_id": "s2"}
            ]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 200);
    let body: Value = batch.json().await.unwrap();
    assert_eq!(body["results"].as_array().unwrap().len(), 2);
    let chair = body["results"][0]["id"].as_str().unwrap().to_owned();
    let batch = producer
        .post(
            "/commands",
            json!({"commands": [
                {"op": "adjust_stock", "id": chair, "delta": -1},
                {"op": "update", "id": chair, "name": "Armchair", "if_match": 2},
                {"op": "delete", "id": chair}
            ]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 200);
    let body: Value = batch.json().await.unwrap();
    assert_eq!(body["results"][2]["version"], 4);

    let events = read_topic(&foldline_testkit::brokers(), &topic).await;
    let types: Vec<EventType> = events
        .iter()
        .filter(|(e, _, _)| e.product_id == id)
        .map(|(e, _, _)| e.event_type())
        .collect();
    assert_eq!(
        types,
        vec![
            EventType::ProductCreated,
            EventType::ProductUpdated,
            EventType::StockAdjusted,
            EventType::LowStockWarning,
            EventType::ProductDeleted
        ]
    );
    assert_eq!(events.len(), 5 + 2 + 3);
    common::assert_gap_free(&events);
    producer.stop().await;
}

async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(body["type"]
        .as_str()
        .unwrap()
        .starts_with("urn:foldline:problem:"));
    assert!(!body["title"].as_str().unwrap().is_empty());
    assert!(!body["detail"].as_str().unwrap().is_empty());
    body
}

/// POSTs `body` as-is to `/products` with a JSON content type.
async fn post_raw(
    client: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    client
        .post(format!("{url}/products"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn bad_requests_get_problem_json_and_append_nothing() {
    let config = common::config();
    let topic = config.log.topic.clone();
    let producer = Producer::start(config).await;
    let client = foldline_testkit::auth::client();
    let url = producer.url.clone();
    let id = producer.create(2).await;

    let send = |builder: reqwest::RequestBuilder| async move { builder.send().await.unwrap() };
    // 400: malformed JSON.
    problem(post_raw(&client, &url, "{\"name\": ").await, 400).await;
    // 415: not JSON.
    problem(
        send(
            client
                .post(format!("{url}/products"))
                .header("content-type", "text/plain")
                .body("hi"),
        )
        .await,
        415,
    )
    .await;
    // 413: body beyond the limit.
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    problem(post_raw(&client, &url, huge).await, 413).await;
    // 422: wrong types, unknown fields, numbers beyond 64 bits, broken rules.
    for body in [
        json!({"name": "x", "price_cents": "12", "stock": 1, "seller_id": "s"}),
        json!({"name": "x", "price_cents": 1, "stock": 1, "seller_id": "s", "colour": "red"}),
        json!({"name": "", "price_cents": 1, "stock": 1, "seller_id": "s"}),
        json!({"name": "x", "price_cents": -1, "stock": 1, "seller_id": "s"}),
        json!({"name": "x", "price_cents": 1, "stock": 1, "seller_id": ""}),
    ] {
        problem(
            send(client.post(format!("{url}/products")).json(&body)).await,
            422,
        )
        .await;
    }
    // 422: a number beyond 64 bits.
    let too_big =
        r#"{"name": "x", "price_cents": 1180591620717411303424, "stock": 1, "seller_id": "s"}"#;
    problem(post_raw(&client, &url, too_big).await, 422).await;
    // 404: unknown product.
    problem(
        send(
            client
                .post(format!("{url}/products/nope/stock"))
                .json(&json!({"delta": 1})),
        )
        .await,
        404,
    )
    .await;
    // 409: below zero.
    problem(
        send(
            client
                .post(format!("{url}/products/{id}/stock"))
                .json(&json!({"delta": -3})),
        )
        .await,
        409,
    )
    .await;
    // 412: stale If-Match.
    problem(
        send(
            client
                .delete(format!("{url}/products/{id}"))
                .header("if-match", "\"7\""),
        )
        .await,
        412,
    )
    .await;
    // A batch whose second command fails appends nothing, and names the command.
    let body = problem(
        send(
            client
                .post(format!("{url}/commands"))
                .json(&json!({"commands": [
                    {"op": "adjust_stock", "id": id, "delta": 1},
                    {"op": "adjust_stock", "id": id, "delta": -10}
                ]})),
        )
        .await,
        409,
    )
    .await;
    assert_eq!(body["command_index"], 1);
    problem(
        send(
            client
                .post(format!("{url}/commands"))
                .json(&json!({"commands": []})),
        )
        .await,
        422,
    )
    .await;

    let events = read_topic(&foldline_testkit::brokers(), &topic).await;
    assert_eq!(events.len(), 1, "only the create was appended");
    producer.stop().await;
}

#[tokio::test]
async fn hostile_input_gets_a_clear_4xx_and_never_crashes_the_producer() {
    let config = common::config();
    let topic = config.log.topic.clone();
    let producer = Producer::start(config).await;
    let client = foldline_testkit::auth::client();
    let url = producer.url.clone();

    // Deep nesting: serde_json's recursion limit refuses it instead of blowing the stack.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for body in [
        format!(r#"{{"name": {deep}, "price_cents": 1, "stock": 1, "seller_id": "s"}}"#),
        deep.clone(),
    ] {
        let status = post_raw(&client, &url, body).await.status().as_u16();
        assert!([400, 422].contains(&status), "deep nesting: {status}");
    }
    // Invalid UTF-8 inside a string and as the whole body.
    let mut bytes = br#"{"name": "ok"#.to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    bytes.extend_from_slice(br#"", "price_cents": 1, "stock": 1, "seller_id": "s"}"#);
    problem(post_raw(&client, &url, bytes).await, 400).await;
    problem(post_raw(&client, &url, vec![0x80u8; 64]).await, 400).await;
    // Numbers beyond 64 bits, negative too, and fractions: valid JSON, wrong value (422); a
    // number beyond even f64: serde_json refuses it while parsing (400).
    for (number, status) in [
        ("18446744073709551616", 422),
        ("-9223372036854775809", 422),
        ("1.5", 422),
        ("1e400", 400),
    ] {
        let body =
            format!(r#"{{"name": "x", "price_cents": 1, "stock": {number}, "seller_id": "s"}}"#);
        problem(post_raw(&client, &url, body).await, status).await;
    }
    // A header far beyond what the server reads: refused before any handler runs.
    let status = client
        .post(format!("{url}/products"))
        .header("x-correlation-id", "c".repeat(1024 * 1024))
        .json(&json!({"name": "x", "price_cents": 1, "stock": 1, "seller_id": "s"}))
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert!(
        matches!(status, Ok(400..=499) | Err(_)),
        "an oversized header is refused: {status:?}"
    );
    // An over-long Idempotency-Key is a clear 400.
    let status = client
        .post(format!("{url}/products"))
        .header("idempotency-key", "k".repeat(300))
        .json(&json!({"name": "x", "price_cents": 1, "stock": 1, "seller_id": "s"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 400);

    // Still serving, and nothing of it reached the log.
    let health = reqwest::get(format!("{url}/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(read_topic(&foldline_testkit::brokers(), &topic)
        .await
        .is_empty());
    producer.stop().await;
}

#[tokio::test]
async fn operational_routes_answer() {
    let producer = Producer::start(common::config()).await;
    let health: Value = reqwest::get(format!("{}/health", producer.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["success"], true);
    assert_eq!(health["service"], "producer");
    assert_eq!(health["status"], "healthy");
    assert!(health["version"].is_string());
    producer.create(1).await;
    let metrics = reqwest::get(format!("{}/metrics", producer.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("producer_transactions_total{outcome=\"committed\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("route=\"/products\""));
    // The OpenAPI document: open (no token), every write route, bearer security.
    let document: Value = reqwest::get(format!("{}/openapi.json", producer.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths: Vec<&str> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        paths,
        [
            "/commands",
            "/products",
            "/products/{id}",
            "/products/{id}/low-stock-threshold",
            "/products/{id}/stock"
        ]
    );
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    producer.stop().await;
}
