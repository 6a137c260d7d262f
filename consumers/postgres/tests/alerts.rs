//! Operators are told (issue 28): a Prometheus of the test's own, configured as `scripts/up`
//! configures it, scrapes the producer, the projector and the query API; `foldline status`
//! says all is well; then the projector is SIGKILLed: its `FoldlineServiceDown` alert becomes
//! pending within the rule's `for`, and `foldline status` names the stopped consumer and the
//! alert and exits 1.

mod common;

use std::time::Duration;

use common::Stack;
use foldline_testkit::prometheus::OwnPrometheus;
use serde_json::Value;

fn port(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// `foldline status --json` for these services: (exit code, report).
fn status(services: &str, prometheus: &str) -> (Option<i32>, Value) {
    let output = std::process::Command::new(foldline_testkit::process::binary("foldline"))
        .args(["status", "--json"])
        .env("FOLDLINE_STATUS_SERVICES", services)
        .env("FOLDLINE_PROMETHEUS_URL", prometheus)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json is not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    (output.status.code(), report)
}

#[tokio::test]
async fn a_stopped_consumer_makes_its_alert_pending_and_status_exit_1() {
    let stack = Stack::start().await;
    let mut projector = stack.projector("alerts").await;
    let prometheus = OwnPrometheus::start(&[
        ("producer", Some(port(&stack.producer.url))),
        ("projector", Some(port(&projector.url))),
        ("query", Some(port(&stack.query.url))),
        ("notifier", None),
        ("archiver", None),
        ("recent-events", None),
        ("schema-registry", None),
    ])
    .await;
    prometheus.wait_targets_up(Duration::from_secs(60)).await;
    stack.mixed_load(5, 10, 31).await;
    let events = stack.topic_events().await;
    stack.wait_caught_up(events.len()).await;
    let services = format!(
        "producer={},projector={},query={}",
        stack.producer.url, projector.url, stack.query.url
    );

    // All well: every service up and ready, nothing firing (the consumer's lag comes with
    // librdkafka's next statistics).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (code, report) = loop {
        let (code, report) = status(&services, &prometheus.url);
        let has_lag = report["services"][1]["lag"]
            .as_object()
            .is_some_and(|l| !l.is_empty());
        if has_lag || tokio::time::Instant::now() > deadline {
            break (code, report);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["ok"], true);
    let projector_status = &report["services"][1];
    assert_eq!(
        (&projector_status["name"], &projector_status["ready"]),
        (&Value::from("projector"), &Value::Bool(true))
    );
    assert!(
        projector_status["version"].is_string(),
        "{projector_status}"
    );
    assert!(
        projector_status["lag"]
            .as_object()
            .is_some_and(|l| !l.is_empty()),
        "the consumer's lag per partition: {projector_status}"
    );
    assert!(report["services"][0]["last_commit_seconds_ago"].is_number());
    assert!(report["alerts"].is_array(), "Prometheus answered");
    assert!(
        !prometheus
            .alerts()
            .await
            .iter()
            .any(|a| a["labels"]["alertname"] == "FoldlineServiceDown"),
        "nothing is down yet"
    );

    // The projector dies: within scrape + evaluation intervals its alert is pending (it
    // fires after the rule's `for` of 1 min, which this test does not wait for).
    projector.kill();
    let killed = tokio::time::Instant::now();
    let pending = loop {
        let alerts = prometheus.alerts().await;
        let found = alerts.into_iter().find(|a| {
            a["labels"]["alertname"] == "FoldlineServiceDown" && a["labels"]["job"] == "projector"
        });
        if let Some(alert) = found {
            break alert;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no FoldlineServiceDown for the projector within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(pending["state"], "pending", "{pending}");
    eprintln!(
        "alerts: FoldlineServiceDown pending {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );

    let (code, report) = status(&services, &prometheus.url);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["ok"], false);
    assert_eq!(report["services"][1]["up"], false, "{report:#}");
    let problems = report["problems"].to_string();
    assert!(problems.contains("projector is down"), "{problems}");
    assert!(
        report["alerts"].as_array().unwrap().iter().any(|a| {
            a["name"] == "FoldlineServiceDown"
                && a["state"] == "pending"
                && a["labels"]["job"] == "projector"
        }),
        "{report:#}"
    );
    // The producer and the query API are still well.
    assert_eq!(report["services"][0]["ready"], true);
    assert_eq!(report["services"][2]["ready"], true);
}
