//! Who may write: bearer tokens (HS256 secret, ES256 from a JWKS with rotation), seller
//! isolation, nothing appended for a refused request, rate limits (429) and CORS.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{config, read_topic, Producer};
use foldline_testkit::auth::token;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn send(
    producer: &Producer,
    method: reqwest::Method,
    path: &str,
    bearer: Option<&str>,
    body: Value,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", producer.url))
        .json(&body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

fn lamp(seller: &str) -> Value {
    json!({"name": "Lamp", "price_cents": 100, "stock": 9, "seller_id": seller})
}

#[tokio::test]
async fn writes_without_a_valid_token_get_401_and_append_nothing() {
    let config = config();
    let (brokers, topic) = (config.log.brokers.clone(), config.log.topic.clone());
    let producer = Producer::start(config).await;
    let post = reqwest::Method::POST;
    let expired = token("late", "admin", None, -120);
    let wrong_key = encode(
        &Header::default(),
        &json!({"sub": "x", "role": "admin", "exp": 4_000_000_000u64}),
        &EncodingKey::from_secret(b"not the secret"),
    )
    .unwrap();
    let no_seller_id = token("s", "seller", None, 600);
    let unknown_role = token("s", "owner", None, 600);
    for (bearer, why) in [
        (None, "no token"),
        (Some("not-a-jwt"), "garbage"),
        (Some(expired.as_str()), "expired"),
        (Some(wrong_key.as_str()), "wrong key"),
        (Some(no_seller_id.as_str()), "seller without seller_id"),
        (Some(unknown_role.as_str()), "unknown role"),
    ] {
        let (status, headers, body) =
            send(&producer, post.clone(), "/products", bearer, lamp("s1")).await;
        assert_eq!(status, 401, "{why}: {body}");
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer realm=\"foldline\""),
            "{why}"
        );
        assert_eq!(headers["content-type"], "application/problem+json", "{why}");
        assert_eq!(body["status"], 401);
    }
    // The batch endpoint and the other routes too.
    let (status, _, _) = send(
        &producer,
        post.clone(),
        "/commands",
        None,
        json!({"commands": [{"op": "create", "name": "x", "price_cents": 1, "stock": 1, "seller_id": "s"}]}),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, _) = send(
        &producer,
        reqwest::Method::DELETE,
        "/products/x",
        None,
        Value::Null,
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        read_topic(&brokers, &topic).await.is_empty(),
        "nothing appended"
    );
    producer.stop().await;
}

#[tokio::test]
async fn a_seller_acts_only_on_its_own_products_and_every_event_names_its_actor() {
    let config = config();
    let (brokers, topic) = (config.log.brokers.clone(), config.log.topic.clone());
    let producer = Producer::start(config).await;
    let post = reqwest::Method::POST;
    let a = token("alice", "seller", Some("seller-a"), 600);
    let b = token("bob", "seller", Some("seller-b"), 600);
    let admin = token("root", "admin", None, 600);

    let (status, _, created) = send(
        &producer,
        post.clone(),
        "/products",
        Some(&a),
        lamp("seller-a"),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, _, body) = send(
        &producer,
        post.clone(),
        "/products",
        Some(&a),
        lamp("seller-b"),
    )
    .await;
    assert_eq!(status, 403, "a seller creates only for itself: {body}");
    assert_eq!(body["type"], "urn:foldline:problem:forbidden");

    let stock = format!("/products/{id}/stock");
    let (status, _, _) = send(
        &producer,
        post.clone(),
        &stock,
        Some(&b),
        json!({"delta": -1}),
    )
    .await;
    assert_eq!(status, 403, "bob cannot touch alice's product");
    let (status, _, _) = send(
        &producer,
        reqwest::Method::PATCH,
        &format!("/products/{id}"),
        Some(&b),
        json!({"price_cents": 1}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = send(
        &producer,
        reqwest::Method::DELETE,
        &format!("/products/{id}"),
        Some(&b),
        Value::Null,
    )
    .await;
    assert_eq!(status, 403);
    // A batch with one forbidden command appends none of it.
    let (status, _, body) = send(
        &producer,
        post.clone(),
        "/commands",
        Some(&b),
        json!({"commands": [
            {"op": "create", "name": "mine", "price_cents": 1, "stock": 1, "seller_id": "seller-b"},
            {"op": "adjust_stock", "id": id, "delta": -1}
        ]}),
    )
    .await;
    assert_eq!(
        (status.as_u16(), body["command_index"].as_u64()),
        (403, Some(1)),
        "{body}"
    );

    let (status, _, _) = send(
        &producer,
        post.clone(),
        &stock,
        Some(&a),
        json!({"delta": -1}),
    )
    .await;
    assert_eq!(status, 200, "alice can");
    let (status, _, _) = send(
        &producer,
        post.clone(),
        &stock,
        Some(&admin),
        json!({"delta": -1}),
    )
    .await;
    assert_eq!(status, 200, "an admin can");

    let events = read_topic(&brokers, &topic).await;
    let actors: Vec<(String, Option<String>)> = events
        .iter()
        .map(|(e, _, _)| (e.event_type().to_string(), e.actor.clone()))
        .collect();
    assert_eq!(
        actors,
        vec![
            ("ProductCreated".into(), Some("alice".into())),
            ("StockAdjusted".into(), Some("alice".into())),
            ("StockAdjusted".into(), Some("root".into())),
        ],
        "only the allowed writes were appended, each with its actor"
    );
    producer.stop().await;
}

/// A JWKS server whose keys the test swaps.
async fn jwks_server(keys: Arc<Mutex<Value>>) -> String {
    let listener = foldline_testkit::listener().await;
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let keys = keys.clone();
            async move { axum::Json(keys.lock().unwrap().clone()) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn es256(key: &str) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.into());
    let now = chrono::Utc::now().timestamp();
    encode(
        &header,
        &json!({"sub": format!("svc-{key}"), "role": "admin", "exp": now + 600, "iss": "https://issuer.test", "aud": "foldline"}),
        &EncodingKey::from_ec_pem(fixture(&format!("{key}.pem")).as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn es256_tokens_from_a_jwks_follow_its_key_rotation() {
    let jwk =
        |key: &str| serde_json::from_str::<Value>(&fixture(&format!("{key}.jwk.json"))).unwrap();
    let keys = Arc::new(Mutex::new(json!({"keys": [jwk("es256-a")]})));
    let mut config = config();
    config.auth.jwt_secret = None;
    config.auth.jwks_url = Some(jwks_server(keys.clone()).await);
    config.auth.jwt_issuer = Some("https://issuer.test".into());
    config.auth.jwt_audience = Some("foldline".into());
    let producer = Producer::start(config).await;
    let post = reqwest::Method::POST;

    let (status, _, body) = send(
        &producer,
        post.clone(),
        "/products",
        Some(&es256("es256-a")),
        lamp("s"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let hs256 = foldline_testkit::auth::admin_token();
    let (status, _, _) = send(
        &producer,
        post.clone(),
        "/products",
        Some(&hs256),
        lamp("s"),
    )
    .await;
    assert_eq!(
        status, 401,
        "HS256 is not accepted when only a JWKS is configured"
    );

    // Rotation: the issuer now signs with key b only.
    *keys.lock().unwrap() = json!({"keys": [jwk("es256-b")]});
    // An unknown key id makes the producer fetch the JWKS again (at most every 5 s).
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let (status, _, body) = send(
        &producer,
        post.clone(),
        "/products",
        Some(&es256("es256-b")),
        lamp("s"),
    )
    .await;
    assert_eq!(status, 201, "the new key is picked up: {body}");
    let (status, _, _) = send(
        &producer,
        post.clone(),
        "/products",
        Some(&es256("es256-a")),
        lamp("s"),
    )
    .await;
    assert_eq!(status, 401, "the retired key no longer works");
    producer.stop().await;
}

#[tokio::test]
async fn writers_over_their_rate_get_429_with_retry_after_each_on_its_own_bucket() {
    let mut config = config();
    config.limits.rate_limit_per_sec = 1;
    config.limits.rate_limit_burst = 2;
    let producer = Producer::start(config).await;
    let post = reqwest::Method::POST;
    let alice = token("alice", "seller", Some("s-a"), 600);
    let bob = token("bob", "seller", Some("s-b"), 600);

    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let (status, headers, _) = send(
            &producer,
            post.clone(),
            "/products",
            Some(&alice),
            lamp("s-a"),
        )
        .await;
        if status == 429 {
            retry_after = headers.get("retry-after").cloned();
            assert_eq!(headers["content-type"], "application/problem+json");
        }
        statuses.push(status.as_u16());
    }
    assert_eq!(&statuses[..2], &[201, 201], "the burst passes");
    assert!(
        statuses[2..].contains(&429),
        "then the bucket is empty: {statuses:?}"
    );
    let seconds: u64 = retry_after
        .expect("Retry-After on a 429")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&seconds), "Retry-After {seconds}");
    let (status, _, _) = send(
        &producer,
        post.clone(),
        "/products",
        Some(&bob),
        lamp("s-b"),
    )
    .await;
    assert_eq!(status, 201, "another subject has its own bucket");

    // Without a token the client address is limited: bad requests cannot flood either.
    let mut anonymous = Vec::new();
    for _ in 0..4 {
        let (status, _, _) = send(&producer, post.clone(), "/products", None, lamp("s")).await;
        anonymous.push(status.as_u16());
    }
    assert_eq!(&anonymous[..2], &[401, 401]);
    assert!(anonymous[2..].contains(&429), "{anonymous:?}");
    producer.stop().await;
}

#[tokio::test]
async fn the_rate_limit_counts_a_batchs_commands_not_the_request() {
    let mut config = config();
    config.limits.rate_limit_per_sec = 1;
    config.limits.rate_limit_burst = 5;
    let producer = Producer::start(config).await;
    let carol = token("carol", "seller", Some("s-c"), 600);
    let batch = |n: usize| {
        json!({"commands": (0..n).map(|_| {
        let mut c = lamp("s-c");
        c["op"] = "create".into();
        c
    }).collect::<Vec<_>>()})
    };
    let post = reqwest::Method::POST;
    let (status, _, _) = send(&producer, post.clone(), "/commands", Some(&carol), batch(4)).await;
    assert_eq!(status, 200, "4 commands within a burst of 5");
    let (status, headers, _) =
        send(&producer, post.clone(), "/commands", Some(&carol), batch(4)).await;
    assert_eq!(status, 429, "4 more are past the bucket");
    assert!(headers.contains_key("retry-after"));
    let (status, _, body) = send(&producer, post, "/commands", Some(&carol), batch(6)).await;
    assert_eq!(status, 429, "a batch larger than the burst: {body}");
    producer.stop().await;
}

#[tokio::test]
async fn the_largest_documented_batch_passes_the_default_rate_limit() {
    // scripts/test raises the limits for load tests: this test uses the shipped defaults.
    let mut config = config();
    config.limits.rate_limit_per_sec = 200;
    config.limits.rate_limit_burst = foldline_producer::http::gate::DEFAULT_BURST;
    let producer = Producer::start(config).await;
    let seller = token("dave", "seller", Some("s-e"), 600);
    let commands: Vec<Value> = (0..foldline_producer::http::MAX_BATCH_COMMANDS)
        .map(|_| {
            let mut c = lamp("s-e");
            c["op"] = "create".into();
            c
        })
        .collect();
    let (status, _, body) = send(
        &producer,
        reqwest::Method::POST,
        "/commands",
        Some(&seller),
        json!({ "commands": commands }),
    )
    .await;
    assert_eq!(status, 200, "a batch of the documented maximum: {body}");
    producer.stop().await;
}

#[tokio::test]
async fn idempotency_keys_belong_to_the_subject_that_sent_them() {
    let config = config();
    let (brokers, topic) = (config.log.brokers.clone(), config.log.topic.clone());
    let producer = Producer::start(config).await;
    let admin = token("admin-1", "admin", None, 600);
    let seller = token("seller:s-d", "seller", Some("s-d"), 600);
    let with_key = |bearer: &str| {
        reqwest::Client::new()
            .post(format!("{}/products", producer.url))
            .bearer_auth(bearer)
            .header("idempotency-key", "shared-key-1")
            .json(&lamp("s-d"))
    };
    let first: Value = with_key(&admin).send().await.unwrap().json().await.unwrap();
    let again: Value = with_key(&admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        first["id"], again["id"],
        "the same subject gets its first answer"
    );
    let response = with_key(&seller).send().await.unwrap();
    assert_eq!(
        response.status(),
        201,
        "another subject's key is another key"
    );
    let other: Value = response.json().await.unwrap();
    assert_ne!(other["id"], first["id"], "never the admin's answer");
    let events = read_topic(&brokers, &topic).await;
    assert_eq!(events.len(), 2, "both commands appended, once each");
    producer.stop().await;
}

#[tokio::test]
async fn cors_preflight_allows_the_live_page_origin_and_no_other() {
    let producer = Producer::start(config()).await;
    let preflight = |origin: &'static str| {
        reqwest::Client::new()
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/products", producer.url),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let allowed = preflight("http://127.0.0.1:8083").await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let headers = allowed.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "http://127.0.0.1:8083"
    );
    let allow_headers = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(allow_headers.contains("authorization"), "{allow_headers}");
    assert!(headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));

    let other = preflight("https://evil.example").await.unwrap();
    assert!(
        other.headers().get("access-control-allow-origin").is_none(),
        "an origin not on the list gets no CORS grant"
    );
    // A real write from the allowed origin is answered with the grant too.
    let answer = reqwest::Client::new()
        .post(format!("{}/products", producer.url))
        .header("origin", "http://127.0.0.1:8083")
        .bearer_auth(foldline_testkit::auth::admin_token())
        .json(&lamp("s"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
    assert_eq!(
        answer.headers()["access-control-allow-origin"],
        "http://127.0.0.1:8083"
    );
    producer.stop().await;
}
