//! A product's whole history and its state as of any moment (issue 27), on the real stack:
//! every event in version order with its position, paged, kept after a delete; `?as_of=` by
//! position and by time, before creation and after deletion; bad input refused.

mod common;

use std::time::Duration;

use common::Stack;
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test]
async fn a_products_history_and_its_state_as_of_any_write() {
    let stack = Stack::start().await;
    let _projector = stack.projector("history").await;
    let created = stack
        .write(
            Method::POST,
            "/products",
            json!({"name": "Lamp", "price_cents": 1000, "stock": 10, "seller_id": "s-1"}),
        )
        .await;
    assert_eq!(created["status"], 201, "{created}");
    let id = created["body"]["id"].as_str().unwrap().to_owned();
    let before_create = chrono::Utc::now() - chrono::Duration::seconds(60);
    let mut answers: Vec<Value> = vec![created["body"].clone()];
    let mut times = Vec::new();
    for (method, path, body) in [
        (
            Method::PATCH,
            format!("/products/{id}"),
            json!({"price_cents": 1200}),
        ),
        (
            Method::POST,
            format!("/products/{id}/stock"),
            json!({"delta": -7, "reason": "order 7"}),
        ),
        (
            Method::PATCH,
            format!("/products/{id}"),
            json!({"name": "Desk lamp"}),
        ),
    ] {
        // Event times a clear step apart, so `as_of` a time between them is unambiguous.
        tokio::time::sleep(Duration::from_millis(30)).await;
        times.push(chrono::Utc::now());
        tokio::time::sleep(Duration::from_millis(30)).await;
        let answer = stack.write(method, &path, body).await;
        assert_eq!(answer["status"], 200, "{answer}");
        answers.push(answer["body"].clone());
    }
    let last = answers.last().unwrap()["position"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, history) = stack
        .get(&format!("/products/{id}/history?after={last}"))
        .await;
    assert_eq!(status, 200, "{history}");
    let events = history["events"].as_array().unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    // The stock change to 3 crosses the threshold (5): a warning in the same transaction.
    assert_eq!(
        types,
        [
            "ProductCreated",
            "ProductUpdated",
            "StockAdjusted",
            "LowStockWarning",
            "ProductUpdated"
        ]
    );
    let versions: Vec<i64> = events
        .iter()
        .map(|e| e["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    assert_eq!(
        events[2]["payload"],
        json!({"delta": -7, "new_stock": 3, "reason": "order 7", "previous_stock": 10})
    );
    assert_eq!(events[0]["position"], answers[0]["position"]);
    assert!(events
        .iter()
        .all(|e| e["actor"].is_string() && e["occurred_at"].is_string()));
    assert_eq!(history["next_from_version"], Value::Null);

    // Paged.
    let (_, page) = stack.get(&format!("/products/{id}/history?limit=2")).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_from_version"], 3);
    let (_, page) = stack
        .get(&format!("/products/{id}/history?limit=2&from_version=3"))
        .await;
    let versions: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [3, 4]);

    // As of each write's position: the state that write left.
    let expected = [
        ("Lamp", 1000, 10, 1),
        ("Lamp", 1200, 10, 2),
        ("Lamp", 1200, 3, 4),
        ("Desk lamp", 1200, 3, 5),
    ];
    for (answer, (name, price, stock, version)) in answers.iter().zip(expected) {
        let position = answer["position"].as_str().unwrap();
        let (status, product) = stack.get(&format!("/products/{id}?as_of={position}")).await;
        assert_eq!(status, 200, "{product}");
        assert_eq!(
            (
                &product["name"],
                &product["price_cents"],
                &product["stock"],
                &product["version"]
            ),
            (&json!(name), &json!(price), &json!(stock), &json!(version)),
            "as of {position}"
        );
        assert_eq!(product["position"], answer["position"]);
    }
    // As of a time between the writes: the state before the next write.
    for (time, (name, price, stock, version)) in times.iter().zip(expected) {
        let at = time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let (status, product) = stack
            .get(&format!("/products/{id}?as_of={}", urlencode(&at)))
            .await;
        assert_eq!(status, 200, "{at}: {product}");
        assert_eq!(
            (
                &product["name"],
                &product["price_cents"],
                &product["stock"],
                &product["version"]
            ),
            (&json!(name), &json!(price), &json!(stock), &json!(version)),
            "as of {at}"
        );
    }
    let at = before_create.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (status, _) = stack
        .get(&format!("/products/{id}?as_of={}", urlencode(&at)))
        .await;
    assert_eq!(status, 404, "it did not exist yet");

    // Deleted: gone now and as of after the delete, its history kept, as of before it there.
    let deleted = stack
        .write(Method::DELETE, &format!("/products/{id}"), json!(null))
        .await;
    assert_eq!(deleted["status"], 200, "{deleted}");
    let position = deleted["body"]["position"].as_str().unwrap();
    let (status, _) = stack.get(&format!("/products/{id}?after={position}")).await;
    assert_eq!(status, 404);
    let (status, _) = stack.get(&format!("/products/{id}?as_of={position}")).await;
    assert_eq!(status, 404, "deleted by then");
    let (status, product) = stack.get(&format!("/products/{id}?as_of={last}")).await;
    assert_eq!((status, &product["name"]), (200, &json!("Desk lamp")));
    let (_, history) = stack.get(&format!("/products/{id}/history")).await;
    assert_eq!(history["events"].as_array().unwrap().len(), 6);
    assert_eq!(history["events"][5]["type"], "ProductDeleted");

    // The same through the CLI.
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(foldline_testkit::process::binary("foldline"))
            .args(["product"])
            .args(args)
            .args(["--query-url", &stack.query.url])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (code, out) = cli(&["show", &id, "--as-of", &last]);
    assert_eq!(code, Some(0));
    let shown: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(shown["name"], "Desk lamp");
    let (code, out) = cli(&["history", &id]);
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 6, "{out}");
    let (code, _) = cli(&["show", &id]);
    assert_eq!(code, Some(1), "deleted: the CLI says so and fails");

    // Bad input.
    for query in ["as_of=yesterday", "as_of=1:", "as_of=2026-13-01T00:00:00Z"] {
        let (status, body) = stack.get(&format!("/products/{id}?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
    }
    let other = (answers[0]["position"]
        .as_str()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse::<i32>()
        .unwrap()
        + 1)
        % 3;
    let (status, body) = stack.get(&format!("/products/{id}?as_of={other}:0")).await;
    assert_eq!(status, 400, "a position in another partition: {body}");
    for query in ["limit=0", "limit=1001", "from_version=0", "limit=x"] {
        let (status, _) = stack.get(&format!("/products/{id}/history?{query}")).await;
        assert_eq!(status, 400, "{query}");
    }
    let (status, _) = stack.get("/products/no-such-product/history").await;
    assert_eq!(status, 404);
    let (status, _) = stack.get("/products/no-such-product?as_of=0:5").await;
    assert_eq!(status, 404);
}

/// A product with hundreds of events, written through two producer processes (the first
/// killed half-way): its history is whole, paged in any size, and `as_of` every 25th write is
/// the state that write left.
#[tokio::test]
async fn hundreds_of_events_across_a_producer_restart() {
    let mut stack = Stack::start().await;
    let _projector = stack.projector("history-long").await;
    let created = stack
        .write(
            Method::POST,
            "/products",
            json!({"name": "Bolt", "price_cents": 1, "stock": 1000, "seller_id": "s-1"}),
        )
        .await;
    assert_eq!(created["status"], 201, "{created}");
    let id = created["body"]["id"].as_str().unwrap().to_owned();
    // (position, price, stock, version) after each write.
    let mut states = vec![(
        created["body"]["position"].as_str().unwrap().to_owned(),
        1,
        1000,
        1,
    )];
    let (mut price, mut stock) = (1i64, 1000i64);
    for i in 1..=300i64 {
        if i == 150 {
            stack.producer.kill();
            stack.producer = foldline_testkit::process::Spawned::producer(&stack.topic).await;
        }
        let answer = if i % 2 == 0 {
            price = i;
            stack
                .write(
                    Method::PATCH,
                    &format!("/products/{id}"),
                    json!({ "price_cents": price }),
                )
                .await
        } else {
            let delta = if i % 3 == 0 { -2 } else { 1 };
            stock += delta;
            stack
                .write(
                    Method::POST,
                    &format!("/products/{id}/stock"),
                    json!({ "delta": delta, "reason": format!("write {i}") }),
                )
                .await
        };
        assert_eq!(answer["status"], 200, "write {i}: {answer}");
        let position = answer["body"]["position"].as_str().unwrap().to_owned();
        states.push((position, price, stock, i + 1));
    }
    let events = stack.topic_events().await;
    assert_eq!(events.len(), 301);
    stack.wait_caught_up(events.len()).await;
    stack.assert_histories_equal(&events).await;

    // Paged by 7: the same 301 events, in version order, each page naming the next.
    let mut versions = Vec::new();
    let mut from = Some(1);
    while let Some(version) = from {
        let (status, page) = stack
            .get(&format!(
                "/products/{id}/history?limit=7&from_version={version}"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        versions.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["version"].as_i64().unwrap()),
        );
        from = page["next_from_version"].as_i64();
    }
    assert_eq!(versions, (1..=301).collect::<Vec<i64>>());

    for (position, price, stock, version) in states.iter().step_by(25).chain(states.last()) {
        let (status, product) = stack.get(&format!("/products/{id}?as_of={position}")).await;
        assert_eq!(status, 200, "{product}");
        assert_eq!(
            (
                &product["price_cents"],
                &product["stock"],
                &product["version"]
            ),
            (&json!(price), &json!(stock), &json!(version)),
            "as of {position}"
        );
        assert_eq!(product["position"].as_str(), Some(position.as_str()));
    }
}

fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

/// `foldline verify` against this stack's read model: (exit code, stdout).
fn verify(stack: &Stack, group: &str) -> (Option<i32>, String) {
    verify_with(stack, group, &["--only", "postgres"], &[])
}

fn verify_with(
    stack: &Stack,
    group: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    stack.verify(group, args, env)
}

#[tokio::test]
async fn verify_passes_while_the_projector_writes_and_finds_a_tampered_row() {
    let stack = Stack::start().await;
    let _projector = stack.projector("verify").await;
    let ids = stack.mixed_load(40, 120, 11).await;
    let busy = stack
        .write(
            Method::POST,
            "/products",
            json!({"name": "Busy", "price_cents": 100, "stock": 10, "seller_id": "s-9"}),
        )
        .await;
    // Verified while writes still arrive: the cut is the model's own offsets.
    let writing = {
        let http = stack.http.clone();
        let url = stack.producer.url.clone();
        let id = busy["body"]["id"].as_str().unwrap().to_owned();
        tokio::spawn(async move {
            for _ in 0..40 {
                let _ = http
                    .post(format!("{url}/products/{id}/stock"))
                    .json(&json!({"delta": 1}))
                    .send()
                    .await;
            }
        })
    };
    let (code, out) = verify(&stack, "verify");
    writing.await.unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("0 differences"), "{out}");
    let events = stack.topic_events().await;
    stack.wait_caught_up(events.len()).await;
    let (code, out) = verify(&stack, "verify");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("read model: {} events", events.len())),
        "every event is verified once caught up: {out}"
    );

    // An operator's stray UPDATE: verify names the product and fails.
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&stack.database_url)
        .await
        .unwrap();
    let schema: String = sqlx::query_scalar("SELECT schema_name FROM foldline_meta.active_model")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let live = ids
        .iter()
        .find(|id| {
            events
                .iter()
                .filter(|e| &e.product_id == *id)
                .all(|e| e.event_type().as_str() != "ProductDeleted")
        })
        .unwrap();
    sqlx::query(&format!(
        "UPDATE {schema}.products SET stock = stock + 1 WHERE id = $1"
    ))
    .bind(live)
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::query(&format!(
        "DELETE FROM {schema}.product_events WHERE product_id = $1 AND version = 1"
    ))
    .bind(&ids[1])
    .execute(&mut db)
    .await
    .unwrap();
    let (code, out) = verify(&stack, "verify");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("difference: product {live}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("difference: history of product {}", ids[1])),
        "{out}"
    );

    // The recent-events table: every event before its consumer's cut, under its product and
    // its day; an item deleted behind its back is found.
    let table = foldline_testkit::unique("VerifyRecentEvents");
    let group = foldline_testkit::unique("verify-recent");
    let _recent = foldline_testkit::process::Spawned::start(
        "foldline-recent-events",
        "FOLDLINE_RECENT_EVENTS_LISTEN",
        &[
            ("FOLDLINE_TOPIC", stack.topic.clone()),
            ("FOLDLINE_DLQ_TOPIC", stack.dlq.clone()),
            ("FOLDLINE_RECENT_EVENTS_TABLE", table.clone()),
            ("FOLDLINE_RECENT_EVENTS_GROUP", group.clone()),
        ],
    )
    .await;
    let env = [
        ("FOLDLINE_RECENT_EVENTS_TABLE", table.as_str()),
        ("FOLDLINE_RECENT_EVENTS_GROUP", group.as_str()),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, out) = verify_with(&stack, "verify", &["--only", "recent-events"], &env);
        assert_eq!(code, Some(0), "{out}");
        if out.contains(&format!("recent events: {} events", events.len())) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not caught up: {out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let client = foldline_recent_events::DynamoDb {
        aws: foldline_service::aws::AwsEndpoint {
            region: "us-east-1".into(),
            local_access_key: "foldline".into(),
            local_secret_key: "foldline-secret".into(),
        },
        dynamodb_endpoint: std::env::var("FOLDLINE_DYNAMODB_ENDPOINT")
            .unwrap_or_else(|_| "http://127.0.0.1:8000".into()),
    }
    .client()
    .await;
    let page = client
        .scan()
        .table_name(&table)
        .limit(1)
        .send()
        .await
        .unwrap();
    let item = page.items()[0].clone();
    let pk = item["pk"].clone();
    let sk = item["sk"].clone();
    client
        .delete_item()
        .table_name(&table)
        .key("pk", pk.clone())
        .key("sk", sk)
        .send()
        .await
        .unwrap();
    let (code, out) = verify_with(&stack, "verify", &["--only", "recent-events"], &env);
    assert_eq!(code, Some(1), "{out}");
    let pk = pk.as_s().unwrap();
    assert!(
        out.contains(&format!("difference: recent-events item {pk}")),
        "{out}"
    );
    assert!(out.contains("missing"), "{out}");
}
