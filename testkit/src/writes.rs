//! Writes through the producer that survive the local broker's hiccups.

use std::time::Duration;

/// POSTs a batch of `commands` to the producer at `producer_url` and returns its answer
/// (`{"results": [...]}`). A 503 (broker trouble: nothing or — outcome unknown — everything
/// appended) is retried with the same Idempotency-Key, so the batch lands exactly once.
pub async fn post_commands(
    client: &reqwest::Client,
    producer_url: &str,
    commands: &[serde_json::Value],
) -> serde_json::Value {
    let key = crate::unique("batch");
    let body = serde_json::json!({ "commands": commands });
    for _ in 0..120 {
        let response = client
            .post(format!("{producer_url}/commands"))
            .header("idempotency-key", &key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let answer: serde_json::Value = response.json().await.unwrap();
        match status {
            200 => return answer,
            503 => tokio::time::sleep(Duration::from_millis(500)).await,
            _ => panic!("batch refused: {status} {answer}"),
        }
    }
    panic!("the producer stayed unavailable for a minute");
}
