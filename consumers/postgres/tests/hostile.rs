//! The hostile-input suite (issue 25): malformed and boundary input on the routes of every
//! service, connections that never finish their headers or sit idle, refused commands by the
//! thousand, many resuming SSE clients — and afterwards every service answers `/health`,
//! every consumer is ready and caught up, nothing is held open, and memory is back near where
//! it started. (The poison records are `tests/poison.rs`; the registry's writes
//! `schema-registry/tests/writes.rs`.)

mod common;

use std::time::Duration;

use common::Stack;
use foldline_testkit::process::Spawned;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADER_TIMEOUT_MS: &str = "1000";

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

/// Opens `n` connections that send half a request head and `n` that send nothing; returns
/// how many of them the server still holds after `wait`.
async fn slow_connections(url: &str, n: usize, wait: Duration) -> usize {
    let mut held = Vec::new();
    for i in 0..2 * n {
        let mut stream = TcpStream::connect(host_port(url)).await.unwrap();
        if i % 2 == 0 {
            stream
                .write_all(b"POST /products HTTP/1.1\r\nhost: x\r\nx-slow: ")
                .await
                .unwrap();
        }
        held.push(stream);
    }
    tokio::time::sleep(wait).await;
    let mut open = 0;
    for mut stream in held {
        let mut buffer = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buffer)).await {
            // Closed (0 bytes or an error), perhaps after a 408.
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(_)) => {
                let closed = tokio::time::timeout(Duration::from_millis(200), async {
                    loop {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
                open += usize::from(closed.is_err());
            }
            Err(_) => open += 1,
        }
    }
    open
}

/// A raw request line and headers, answered with a status (0: no answer).
async fn raw(url: &str, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(host_port(url)).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn hostile_input_on_every_service_leaves_every_service_well() {
    // Every service this test starts closes a connection without a request head in 1 s.
    std::env::set_var("FOLDLINE_HEADER_READ_TIMEOUT_MS", HEADER_TIMEOUT_MS);
    let stack = Stack::start().await;
    let projector = stack.projector(&foldline_testkit::unique("hostile")).await;
    let recent = stack.recent_events("Hostile").await;
    let notifier = Spawned::start(
        "foldline-notifier",
        "FOLDLINE_NOTIFIER_LISTEN",
        &[
            ("FOLDLINE_TOPIC", stack.topic.clone()),
            ("FOLDLINE_SSE_MAX_STREAMS", "300".into()),
        ],
    )
    .await;
    stack.mixed_load(10, 20, 31).await;
    let services: [(&str, &Spawned); 5] = [
        ("producer", &stack.producer),
        ("query", &stack.query),
        ("notifier", &notifier),
        ("projector", &projector),
        ("recent-events", &recent),
    ];
    let rss_before: Vec<u64> = services.iter().map(|(_, s)| s.rss_kib()).collect();
    let fds_before: Vec<usize> = services.iter().map(|(_, s)| s.open_fds()).collect();

    // Connections that never finish their headers, or never send one, are closed.
    for (name, service) in &services {
        let held = slow_connections(&service.url, 20, Duration::from_millis(2500)).await;
        assert_eq!(held, 0, "{name} still holds {held} of 40 slow connections");
    }

    // Malformed requests on every service: a clean 4xx, never a 5xx or a dropped connection.
    let big_path = format!("/products/{}", "x".repeat(8_000));
    for (name, service) in &services {
        for request in [
            b"FOO / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(),
            b"GET /%zz%00 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(),
            format!("GET {big_path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").into_bytes(),
            format!(
                "GET /health HTTP/1.1\r\nhost: x\r\nx-big: {}\r\nconnection: close\r\n\r\n",
                "h".repeat(200_000)
            )
            .into_bytes(),
            b"GET /health HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\nconnection: close\r\n\r\n"
                .to_vec(),
        ] {
            let status = raw(&service.url, &request).await;
            assert!(
                (400..500).contains(&status) || status == 0 && request.len() > 100_000,
                "{name}: {status} for {:.60}",
                String::from_utf8_lossy(&request)
            );
        }
        let health = reqwest::get(format!("{}/health", service.url))
            .await
            .unwrap();
        assert_eq!(health.status(), 200, "{name} after malformed requests");
    }
    // A connection per request: the server closes one whose body it refused unread (the
    // 2 MiB body, 413), and a pooled client reusing it at that moment would see the close,
    // not an answer.
    let client = reqwest::Client::builder()
        .default_headers(foldline_testkit::auth::admin_headers())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let producer = &stack.producer.url;
    for (method, path, body) in [
        (Method::POST, "/products", "{not json".to_owned()),
        (
            Method::POST,
            "/products",
            json!({"name": 1, "price_cents": "x"}).to_string(),
        ),
        (Method::POST, "/products", "x".repeat(2 * 1024 * 1024)),
        (
            Method::POST,
            "/commands",
            json!({"commands": []}).to_string(),
        ),
        (
            Method::POST,
            "/commands",
            json!({"commands": "nope"}).to_string(),
        ),
        (
            Method::PATCH,
            "/products/%00",
            json!({"name": "x"}).to_string(),
        ),
        (
            Method::POST,
            "/products/nope/stock",
            json!({"delta": 1e300}).to_string(),
        ),
    ] {
        let answer = client
            .request(method.clone(), format!("{producer}{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        assert!((400..500).contains(&status), "{method} {path}: {status}");
    }
    for path in [
        "/products?limit=-1",
        "/products?limit=99999999999999999999",
        "/products/x?as_of=garbage&after=9:9:9",
        "/products/x?after=0:1&timeout_ms=999999999",
        "/sellers/%00/stats",
        "/analytics/summary?unknown=1",
    ] {
        let status = reqwest::get(format!("{}{path}", stack.query.url))
            .await
            .unwrap()
            .status();
        assert!(
            status.is_client_error() || status.is_success(),
            "query {path}: {status}"
        );
    }

    // Refused commands leave nothing behind: 20,000 creates a seller may not make.
    let seller = foldline_testkit::auth::token("seller:hostile", "seller", Some("hostile"), 600);
    let producer_rss = stack.producer.rss_kib();
    for round in 0..20 {
        let commands: Vec<Value> = (0..1000)
            .map(|i| json!({"op": "create", "name": format!("n{round}-{i}"), "price_cents": 1, "stock": 1, "seller_id": "someone-else"}))
            .collect();
        let answer = reqwest::Client::new()
            .post(format!("{producer}/commands"))
            .bearer_auth(&seller)
            .json(&json!({ "commands": commands }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 403);
    }
    let grown = stack.producer.rss_kib().saturating_sub(producer_rss);
    assert!(
        grown < 4_000,
        "20,000 refused creates grew the producer by {grown} KiB"
    );

    // Many resuming SSE clients: served from memory, up to the cap; past it 503.
    let recent_events: Value = reqwest::get(format!("{}/events/recent?limit=5", notifier.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cursor = recent_events["cursor"].as_str().unwrap().to_owned();
    let mut streams = Vec::new();
    let mut refused = 0;
    for _ in 0..320 {
        let response = reqwest::Client::new()
            .get(format!("{}/events/stream", notifier.url))
            .header("last-event-id", &cursor)
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => streams.push(response),
            503 => refused += 1,
            other => panic!("SSE answered {other}"),
        }
    }
    assert_eq!((streams.len(), refused), (300, 20));
    drop(streams);

    // Afterwards: everything well, caught up, nothing held open, memory near where it was.
    stack.mixed_load(5, 10, 32).await;
    let events = stack.topic_events().await;
    stack.wait_caught_up(events.len()).await;
    stack.assert_model_equals_fold(&events).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (i, (name, service)) in services.iter().enumerate() {
        let health = reqwest::get(format!("{}/health", service.url))
            .await
            .unwrap();
        assert_eq!(health.status(), 200, "{name}");
        service.wait_ready(Duration::from_secs(30)).await;
        let fds = service.open_fds();
        assert!(
            fds <= fds_before[i] + 20,
            "{name}: {fds} descriptors open, {} before",
            fds_before[i]
        );
        let rss = service.rss_kib();
        assert!(
            rss < rss_before[i] + 64 * 1024,
            "{name}: {rss} KiB resident, {} KiB before",
            rss_before[i]
        );
    }
    assert_eq!(projector.metric("consumer_parked_products").await, 0.0);
}
