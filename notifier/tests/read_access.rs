//! With `FOLDLINE_READS_REQUIRE_TOKEN`, the stream needs a token (header or `?access_token=`,
//! for EventSource); the page itself stays open.

use foldline_testkit::auth::{admin_token, token};
use foldline_testkit::process::Spawned;

#[tokio::test]
async fn the_stream_needs_a_token_when_reads_are_gated_and_the_page_stays_open() {
    let topic = foldline_testkit::unique("gated");
    foldline_service::kafka::ensure_topic(&foldline_testkit::brokers(), &topic, 3, &[])
        .await
        .unwrap();
    let notifier = Spawned::start(
        "foldline-notifier",
        "FOLDLINE_NOTIFIER_LISTEN",
        &[
            ("FOLDLINE_TOPIC", topic),
            ("FOLDLINE_READS_REQUIRE_TOKEN", "true".into()),
        ],
    )
    .await;
    let stream = format!("{}/events/stream", notifier.url);
    let client = reqwest::Client::new();

    let refused = client.get(&stream).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().contains_key("www-authenticate"));
    let expired = client
        .get(format!(
            "{stream}?access_token={}",
            token("x", "admin", None, -60)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), 401);

    // Any role may read; EventSource sends the token as a query parameter.
    let seller = token("s", "seller", Some("s-1"), 600);
    for request in [
        client.get(format!("{stream}?access_token={seller}")),
        client.get(&stream).bearer_auth(admin_token()),
    ] {
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), 200);
        assert!(answer.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
    }
    let page = client.get(&notifier.url).send().await.unwrap();
    assert_eq!(page.status(), 200, "the page is open; its stream is not");
}
