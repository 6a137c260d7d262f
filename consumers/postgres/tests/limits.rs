//! The limits of the write API (issue 25) through the whole pipeline: a command just past
//! any limit is refused with 422 naming the field and appends nothing; commands at every
//! limit are accepted, and the projector, the recent-events consumer, the archiver and the
//! notifier all apply them (nothing parked, nothing dead-lettered), the read model equal to
//! the fold of the log.

mod common;

use std::time::Duration;

use common::Stack;
use foldline_schemas::limits::{
    NAME_MAX_CHARS, PRICE_CENTS_MAX, REASON_MAX_CHARS, SELLER_ID_MAX_CHARS, STOCK_MAX,
};
use foldline_testkit::process::Spawned;
use reqwest::Method;
use serde_json::{json, Value};

fn create(name: &str, price: i64, stock: i64, seller: &str) -> Value {
    json!({"name": name, "price_cents": price, "stock": stock, "seller_id": seller})
}

#[tokio::test]
async fn past_every_limit_is_refused_and_at_every_limit_every_consumer_applies_it() {
    let stack = Stack::start().await;
    let projector = stack.projector(&foldline_testkit::unique("limits")).await;
    let recent = stack.recent_events("Limits").await;
    let archiver = Spawned::start(
        "foldline-archiver",
        "FOLDLINE_ARCHIVER_LISTEN",
        &[
            ("FOLDLINE_TOPIC", stack.topic.clone()),
            ("FOLDLINE_DLQ_TOPIC", stack.dlq.clone()),
            (
                "FOLDLINE_ARCHIVE_BUCKET",
                foldline_testkit::unique("limits-archive"),
            ),
            (
                "FOLDLINE_ARCHIVER_GROUP",
                foldline_testkit::unique("limits-archiver"),
            ),
            ("FOLDLINE_ARCHIVE_FILE_SECONDS", "1".into()),
        ],
    )
    .await;
    let notifier = Spawned::start(
        "foldline-notifier",
        "FOLDLINE_NOTIFIER_LISTEN",
        &[("FOLDLINE_TOPIC", stack.topic.clone())],
    )
    .await;
    let (stop_sse, sse_stopped) = tokio::sync::watch::channel(false);
    let sse = tokio::spawn(foldline_testkit::sse::follow(
        format!("{}/events/stream", notifier.url),
        sse_stopped,
    ));

    let base = stack
        .write(
            Method::POST,
            "/products",
            create("base", 100, 10, "seller-0"),
        )
        .await;
    assert_eq!(base["status"], 201, "{base}");
    let id = base["body"]["id"].as_str().unwrap().to_owned();
    let full = stack
        .write(
            Method::POST,
            "/products",
            create("full", 1, STOCK_MAX, "seller-0"),
        )
        .await;
    let full_id = full["body"]["id"].as_str().unwrap().to_owned();

    // Just past each limit: 422 naming the field.
    let name_over = "n".repeat(NAME_MAX_CHARS + 1);
    let seller_over = "s".repeat(SELLER_ID_MAX_CHARS + 1);
    let reason_over = "r".repeat(REASON_MAX_CHARS + 1);
    let stock = format!("/products/{id}/stock");
    let product = format!("/products/{id}");
    let over: Vec<(Method, String, Value, &str)> = vec![
        (
            Method::POST,
            "/products".into(),
            create(&name_over, 1, 1, "s"),
            "name",
        ),
        (
            Method::POST,
            "/products".into(),
            create("lamp\u{0}", 1, 1, "s"),
            "name",
        ),
        (
            Method::POST,
            "/products".into(),
            create("two\nlines", 1, 1, "s"),
            "name",
        ),
        (
            Method::POST,
            "/products".into(),
            create("x", PRICE_CENTS_MAX + 1, 1, "s"),
            "price_cents",
        ),
        (
            Method::POST,
            "/products".into(),
            create("x", 1 << 62, 1, "s"),
            "price_cents",
        ),
        (
            Method::POST,
            "/products".into(),
            create("x", 1, STOCK_MAX + 1, "s"),
            "stock",
        ),
        (
            Method::POST,
            "/products".into(),
            create("x", 1, 1, &seller_over),
            "seller_id",
        ),
        (
            Method::POST,
            "/products".into(),
            create("x", 1, 1, "seller one"),
            "seller_id",
        ),
        (
            Method::POST,
            "/products".into(),
            create("x", 1, 1, &"s".repeat(4000)),
            "seller_id",
        ),
        (
            Method::PATCH,
            product.clone(),
            json!({"name": name_over}),
            "name",
        ),
        (
            Method::PATCH,
            product.clone(),
            json!({"price_cents": PRICE_CENTS_MAX + 1}),
            "price_cents",
        ),
        (
            Method::POST,
            stock.clone(),
            json!({"delta": -1, "reason": reason_over}),
            "reason",
        ),
        (
            Method::POST,
            stock.clone(),
            json!({"delta": -1, "reason": "r".repeat(500_000)}),
            "reason",
        ),
        (
            Method::POST,
            stock.clone(),
            json!({"delta": -1, "reason": "nul\u{0}"}),
            "reason",
        ),
        (
            Method::POST,
            stock.clone(),
            json!({"delta": -(STOCK_MAX + 1)}),
            "delta",
        ),
        (
            Method::POST,
            format!("/products/{full_id}/stock"),
            json!({"delta": 1}),
            "delta",
        ),
    ];
    let logged_before = stack.topic_events().await.len();
    for (method, path, body, field) in &over {
        let answer = stack.write(method.clone(), path, body.clone()).await;
        assert_eq!(answer["status"], 422, "{method} {path}: {answer}");
        let detail = answer["body"]["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(field),
            "{method} {path}: {detail} names {field}"
        );
    }
    // A batch past a limit appends nothing of it, and names the command.
    let batch = stack
        .write(
            Method::POST,
            "/commands",
            json!({"commands": [
                {"op": "create", "name": "ok", "price_cents": 1, "stock": 1, "seller_id": "s"},
                {"op": "create", "name": "ok", "price_cents": PRICE_CENTS_MAX + 1, "stock": 1, "seller_id": "s"}]}),
        )
        .await;
    assert_eq!(batch["status"], 422, "{batch}");
    assert_eq!(batch["body"]["command_index"], 1, "{batch}");
    assert_eq!(batch["body"]["field"], "price_cents", "{batch}");
    assert_eq!(
        stack.topic_events().await.len(),
        logged_before,
        "nothing appended"
    );

    // At each limit (characters of 2, 3 and 4 bytes in UTF-8): accepted.
    let at: Vec<(Method, String, Value)> = vec![
        (
            Method::POST,
            "/products".into(),
            create(
                &"é".repeat(NAME_MAX_CHARS),
                PRICE_CENTS_MAX,
                STOCK_MAX,
                &"s".repeat(SELLER_ID_MAX_CHARS),
            ),
        ),
        (
            Method::POST,
            "/products".into(),
            create("zero", 0, 0, "a.b_c-d:e@f"),
        ),
        (
            Method::PATCH,
            product.clone(),
            json!({"name": "名".repeat(NAME_MAX_CHARS), "price_cents": PRICE_CENTS_MAX}),
        ),
        (
            Method::POST,
            stock.clone(),
            json!({"delta": -10, "reason": "🙂".repeat(REASON_MAX_CHARS)}),
        ),
        (
            Method::POST,
            stock.clone(),
            json!({"delta": STOCK_MAX, "reason": "line\nwith\ttab"}),
        ),
        (
            Method::POST,
            format!("/products/{full_id}/stock"),
            json!({"delta": -STOCK_MAX}),
        ),
    ];
    for (method, path, body) in &at {
        let answer = stack.write(method.clone(), path, body.clone()).await;
        assert!(
            [200, 201].contains(&answer["status"].as_u64().unwrap()),
            "{method} {path}: {answer}"
        );
    }
    stack.mixed_load(5, 10, 21).await;

    let events = stack.topic_events().await;
    stack.wait_caught_up(events.len()).await;
    stack.assert_model_equals_fold(&events).await;
    let (_, stats) = stack
        .get(&format!(
            "/sellers/{}/stats",
            "s".repeat(SELLER_ID_MAX_CHARS)
        ))
        .await;
    assert_eq!(stats["stock_value_cents"], PRICE_CENTS_MAX * STOCK_MAX);

    // Every other consumer applied every event: nothing parked, nothing dead-lettered.
    for consumer in [&projector, &recent, &archiver] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        while consumer.metric("consumer_events_total").await < events.len() as f64 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} behind",
                consumer.name
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(
            consumer.metric("consumer_parked_products").await,
            0.0,
            "{}",
            consumer.name
        );
        assert_eq!(
            consumer.metric("consumer_events_total").await,
            events.len() as f64
        );
        consumer.wait_ready(Duration::from_secs(1)).await;
    }
    // The notifier tails the log directly; every consumer above is slower than it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_sse.send(true).unwrap();
    let report = sse.await.unwrap();
    let ids: std::collections::HashSet<&str> = report
        .events
        .iter()
        .filter_map(|e| e.data["event_id"].as_str())
        .collect();
    for event in &events {
        assert!(
            ids.contains(event.event_id.to_string().as_str()),
            "SSE missed {}",
            event.event_id
        );
    }
}
