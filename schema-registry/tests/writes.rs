//! Who may change the registry, and what it takes (issue 25): writes need an admin token,
//! reads stay open; a schema too large is 413; a union too wide is refused before any
//! compatibility check runs.

use std::time::{Duration, Instant};

use clap::Parser;
use foldline_schema_registry::{run, Config};
use serde_json::{json, Value};

async fn registry() -> String {
    let config = Config::parse_from([
        "foldline-schema-registry",
        "--brokers",
        &foldline_testkit::brokers(),
        "--topic",
        &foldline_testkit::unique("_schemas"),
        "--jwt-secret",
        &foldline_testkit::auth::secret(),
    ]);
    let listener = foldline_testkit::listener().await;
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(run(config, listener, std::future::pending()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{url}/subjects")).await.is_err() {
        assert!(Instant::now() < deadline, "registry did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    url
}

async fn post(url: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn writes_need_an_admin_token_and_inputs_are_bounded() {
    let url = registry().await;
    let schema =
        json!({"type": "record", "name": "Thing", "fields": [{"name": "a", "type": "long"}]});
    let body = json!({"schema": schema.to_string()});
    let versions = format!("{url}/subjects/things-value/versions");
    let admin = foldline_testkit::auth::admin_token();
    let seller = foldline_testkit::auth::token("seller:s1", "seller", Some("s1"), 600);

    assert_eq!(post(&versions, None, body.clone()).await.0, 401);
    assert_eq!(
        post(&versions, Some("not-a-jwt"), body.clone()).await.0,
        401
    );
    assert_eq!(post(&versions, Some(&seller), body.clone()).await.0, 403);
    let config = reqwest::Client::new()
        .put(format!("{url}/config/things-value"))
        .json(&json!({"compatibility": "NONE"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        config.status(),
        401,
        "changing compatibility needs a token too"
    );
    let (status, registered) = post(&versions, Some(&admin), body.clone()).await;
    assert_eq!(status, 200, "{registered}");
    // Reads need nothing.
    let latest: Value = reqwest::get(format!("{versions}/latest"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(latest["version"], 1);
    let (status, _) = post(&format!("{url}/subjects/things-value"), None, body).await;
    assert_eq!(status, 200, "a lookup is a read");

    // 1.3 MB of schema: 413, not a 500.
    let fields: Vec<Value> = (0..40_000)
        .map(|i| json!({"name": format!("field_{i}"), "type": "long"}))
        .collect();
    let huge = json!({"type": "record", "name": "Huge", "fields": fields}).to_string();
    assert!(huge.len() > 1_000_000);
    let (status, _) = post(&versions, Some(&admin), json!({"schema": huge})).await;
    assert_eq!(status, 413);

    // A union of 400 branches (a small schema) is refused at once, also on the (open)
    // compatibility route.
    let branches: Vec<Value> = (0..400)
        .map(|i| json!({"type": "record", "name": format!("B{i}"), "fields": []}))
        .collect();
    let wide = json!({"type": "record", "name": "Thing", "fields": [
        {"name": "a", "type": "long"}, {"name": "u", "type": branches, "default": null}]})
    .to_string();
    for target in [
        versions.clone(),
        format!("{url}/compatibility/subjects/things-value/versions/latest"),
    ] {
        let started = Instant::now();
        let (status, answer) = post(&target, Some(&admin), json!({"schema": wide})).await;
        assert_eq!(status, 422, "{target}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains("branches"),
            "{answer}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn no_schema_is_ever_deleted_soft_or_hard_even_by_an_admin() {
    let url = registry().await;
    let schema =
        json!({"type": "record", "name": "Kept", "fields": [{"name": "a", "type": "long"}]});
    let admin = foldline_testkit::auth::admin_token();
    let (status, registered) = post(
        &format!("{url}/subjects/kept-value/versions"),
        Some(&admin),
        json!({"schema": schema.to_string()}),
    )
    .await;
    assert_eq!(status, 200, "{registered}");
    for path in [
        "/subjects/kept-value",
        "/subjects/kept-value?permanent=true",
        "/subjects/kept-value/versions/1",
        "/subjects/kept-value/versions/1?permanent=true",
        "/subjects/kept-value/versions/latest",
    ] {
        let answer = reqwest::Client::new()
            .delete(format!("{url}{path}"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 422, "{path}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error_code"], 42205, "{path}: {body}");
    }
    let by_id: Value = reqwest::get(format!("{url}/schemas/ids/{}", registered["id"]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(by_id["schema"].is_string(), "still there: {by_id}");
}
