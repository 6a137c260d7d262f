//! With `FOLDLINE_READS_REQUIRE_TOKEN`, the query API answers only requests with a valid token;
//! health, readiness and metrics stay open.

use foldline_testkit::auth::{admin_token, token};
use foldline_testkit::process::Spawned;

#[tokio::test]
async fn queries_need_a_token_when_reads_are_gated() {
    let database_url = foldline_testkit::postgres::fresh_database().await;
    let query = Spawned::start(
        "foldline-query",
        "FOLDLINE_QUERY_LISTEN",
        &[
            ("FOLDLINE_DATABASE_URL", database_url),
            ("FOLDLINE_TOPIC", foldline_testkit::unique("gated")),
            ("FOLDLINE_READS_REQUIRE_TOKEN", "true".into()),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let summary = format!("{}/analytics/summary", query.url);
    let refused = client.get(&summary).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let forged = client
        .get(&summary)
        .bearer_auth("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    for bearer in [admin_token(), token("s", "seller", Some("s-1"), 600)] {
        let answer = client
            .get(&summary)
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    let missing = client
        .get(format!("{}/products/nope", query.url))
        .bearer_auth(admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(
        missing.status(),
        404,
        "past the guard, the API answers as usual"
    );
    for open in ["/health", "/ready", "/metrics"] {
        let answer = client
            .get(format!("{}{open}", query.url))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{open} stays open");
    }
}
