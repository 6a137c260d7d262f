//! `foldline status`: one screen saying whether Foldline is well — each service up and ready
//! with its version (`/health`, `/ready`), each consumer's lag per partition and how long it
//! has been behind, its parked products and dead letters, the producer's last commit and
//! snapshot (all from each service's `/metrics`), and Prometheus's firing and pending alerts
//! when it is reachable. Exit 0 when all is well, 1 otherwise; `--json` for scripts.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use prometheus_parse::{Sample, Scrape, Value as MetricValue};
use serde::Serialize;
use serde_json::Value;

/// The local stack's services (README, "What runs where").
const LOCAL_SERVICES: &str = "producer=http://127.0.0.1:8080,projector=http://127.0.0.1:9101,\
query=http://127.0.0.1:8082,notifier=http://127.0.0.1:8083,archiver=http://127.0.0.1:9102,\
recent-events=http://127.0.0.1:9103,schema-registry=http://127.0.0.1:8081";

/// A partition this many records behind for this long is a problem.
const BEHIND_RECORDS: f64 = 1000.0;
const BEHIND_SECONDS: f64 = 60.0;

#[derive(Args)]
pub struct StatusArgs {
    /// The services to ask, `name=url` (comma-separated); the local stack's by default.
    #[arg(
        long,
        env = "FOLDLINE_STATUS_SERVICES",
        value_delimiter = ',',
        default_value = LOCAL_SERVICES
    )]
    services: Vec<String>,
    /// Prometheus, for the alerts (skipped when unreachable).
    #[arg(
        long,
        env = "FOLDLINE_PROMETHEUS_URL",
        default_value = "http://127.0.0.1:9090"
    )]
    prometheus_url: String,
    /// One JSON document instead of the screen.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Default)]
struct ServiceStatus {
    name: String,
    url: String,
    up: bool,
    ready: bool,
    version: Option<String>,
    /// Why not ready, or why unreachable.
    detail: Option<String>,
    /// Records behind per partition (consumers).
    lag: BTreeMap<String, f64>,
    /// Seconds since each partition was last caught up (consumers).
    behind_seconds: BTreeMap<String, f64>,
    parked_products: Option<f64>,
    dead_letters: Option<f64>,
    /// Seconds since the last commit and the last stored snapshot (producer).
    last_commit_seconds_ago: Option<f64>,
    last_snapshot_seconds_ago: Option<f64>,
    commits_with_unknown_outcome: Option<f64>,
    sse_clients: Option<f64>,
}

#[derive(Serialize)]
struct Alert {
    state: String,
    name: String,
    labels: BTreeMap<String, String>,
    summary: String,
}

#[derive(Serialize)]
struct Report {
    ok: bool,
    problems: Vec<String>,
    services: Vec<ServiceStatus>,
    prometheus: String,
    /// `None` when Prometheus could not be asked.
    alerts: Option<Vec<Alert>>,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    let mut services = Vec::new();
    for entry in &args.services {
        let (name, url) = entry
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--services: {entry:?} is not name=url"))?;
        services.push(ask(&client, name, url.trim_end_matches('/')).await);
    }
    let prometheus = args.prometheus_url.trim_end_matches('/').to_owned();
    let alerts = alerts(&client, &prometheus).await.ok();
    let problems = problems(&services, alerts.as_deref());
    let report = Report {
        ok: problems.is_empty(),
        problems,
        services,
        prometheus: match alerts {
            Some(_) => prometheus,
            None => format!("{prometheus} (unreachable: alerts not shown)"),
        },
        alerts,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", screen(&report));
    }
    if !report.ok {
        std::process::exit(1);
    }
    Ok(())
}

async fn ask(client: &reqwest::Client, name: &str, url: &str) -> ServiceStatus {
    let mut status = ServiceStatus {
        name: name.to_owned(),
        url: url.to_owned(),
        ..ServiceStatus::default()
    };
    match get_json(client, &format!("{url}/health")).await {
        Ok((_, health)) => {
            status.up = true;
            status.version = health["version"].as_str().map(str::to_owned);
        }
        Err(error) => {
            status.detail = Some(error);
            return status;
        }
    }
    match get_json(client, &format!("{url}/ready")).await {
        Ok((ready, body)) => {
            status.ready = ready;
            if !ready {
                status.detail = body["detail"].as_str().map(str::to_owned);
            }
        }
        Err(error) => status.detail = Some(error),
    }
    if let Ok(response) = client.get(format!("{url}/metrics")).send().await {
        if let Ok(text) = response.text().await {
            read_metrics(&mut status, &text);
        }
    }
    status
}

async fn get_json(client: &reqwest::Client, url: &str) -> Result<(bool, Value), String> {
    let response = client.get(url).send().await.map_err(|e| {
        if e.is_connect() {
            "not answering (connection refused)".to_owned()
        } else {
            format!("not answering ({e})")
        }
    })?;
    let ok = response.status().is_success();
    Ok((ok, response.json().await.unwrap_or(Value::Null)))
}

fn value(sample: &Sample) -> f64 {
    match sample.value {
        MetricValue::Counter(v) | MetricValue::Gauge(v) | MetricValue::Untyped(v) => v,
        _ => f64::NAN,
    }
}

/// What the service's own metrics say (names in docs/operations.md, "Metrics").
fn read_metrics(status: &mut ServiceStatus, text: &str) {
    let Ok(scrape) = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))) else {
        return;
    };
    let now = chrono::Utc::now().timestamp() as f64;
    let ago = |at: f64| (at > 0.0).then(|| (now - at).max(0.0));
    for sample in &scrape.samples {
        let v = value(sample);
        let partition = || sample.labels.get("partition").unwrap_or("?").to_owned();
        match sample.metric.as_str() {
            "consumer_lag_records" => {
                status.lag.insert(partition(), v);
            }
            "consumer_caught_up_timestamp_seconds" => {
                if let Some(seconds) = ago(v) {
                    status.behind_seconds.insert(partition(), seconds);
                }
            }
            "consumer_parked_products" => status.parked_products = Some(v),
            "consumer_dead_lettered_total" => {
                *status.dead_letters.get_or_insert(0.0) += v;
            }
            "producer_last_commit_timestamp_seconds" => status.last_commit_seconds_ago = ago(v),
            "producer_snapshot_last_stored_timestamp_seconds" => {
                status.last_snapshot_seconds_ago = ago(v)
            }
            "producer_transactions_total" if sample.labels.get("outcome") == Some("failed") => {
                status.commits_with_unknown_outcome = Some(v)
            }
            "sse_clients" => status.sse_clients = Some(v),
            _ => {}
        }
    }
    // Caught up partitions are not "behind" at all.
    let lag = status.lag.clone();
    status
        .behind_seconds
        .retain(|p, _| lag.get(p).is_some_and(|l| *l > 10.0));
}

/// Firing and pending alerts, from Prometheus's HTTP API.
async fn alerts(client: &reqwest::Client, prometheus: &str) -> anyhow::Result<Vec<Alert>> {
    let body: Value = client
        .get(format!("{prometheus}/api/v1/alerts"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut alerts: Vec<Alert> = body["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let mut labels: BTreeMap<String, String> = a["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let name = labels.remove("alertname").unwrap_or_default();
            Alert {
                state: a["state"].as_str().unwrap_or_default().to_owned(),
                name,
                labels,
                summary: a["annotations"]["summary"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            }
        })
        .collect();
    alerts.sort_by(|a, b| (&a.state, &a.name).cmp(&(&b.state, &b.name)));
    Ok(alerts)
}

fn problems(services: &[ServiceStatus], alerts: Option<&[Alert]>) -> Vec<String> {
    let mut problems = Vec::new();
    for s in services {
        if !s.up {
            problems.push(format!("{} is down", s.name));
        } else if !s.ready {
            problems.push(format!("{} is not ready", s.name));
        }
        if s.parked_products.is_some_and(|n| n > 0.0) {
            problems.push(format!("{} keeps products parked", s.name));
        }
        for (partition, behind) in &s.behind_seconds {
            let lag = s.lag.get(partition).copied().unwrap_or(0.0);
            if lag > BEHIND_RECORDS && *behind > BEHIND_SECONDS {
                problems.push(format!(
                    "{} is {lag} records behind on partition {partition} for {behind:.0} s",
                    s.name
                ));
            }
        }
    }
    for alert in alerts.into_iter().flatten() {
        if alert.state == "firing" {
            problems.push(format!("alert {} is firing", alert.name));
        }
    }
    problems
}

fn screen(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Foldline status at {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    );
    let _ = writeln!(
        out,
        "{:<16} {:<10} {:<9} detail",
        "service", "state", "version"
    );
    for s in &report.services {
        let state = match (s.up, s.ready) {
            (false, _) => "DOWN",
            (true, false) => "NOT READY",
            (true, true) => "ready",
        };
        let _ = writeln!(
            out,
            "{:<16} {:<10} {:<9} {}",
            s.name,
            state,
            s.version.as_deref().unwrap_or("-"),
            detail(s)
        );
    }
    match &report.alerts {
        None => {
            let _ = writeln!(out, "alerts: Prometheus at {}", report.prometheus);
        }
        Some(alerts) if alerts.is_empty() => {
            let _ = writeln!(out, "alerts: none (Prometheus at {})", report.prometheus);
        }
        Some(alerts) => {
            let _ = writeln!(out, "alerts (Prometheus at {}):", report.prometheus);
            for a in alerts {
                let labels: Vec<String> =
                    a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let _ = writeln!(
                    out,
                    "  {:<8} {} {{{}}}: {}",
                    a.state,
                    a.name,
                    labels.join(", "),
                    a.summary
                );
            }
        }
    }
    if report.ok {
        let _ = writeln!(out, "all well");
    } else {
        let _ = writeln!(
            out,
            "{} problem(s): {}",
            report.problems.len(),
            report.problems.join("; ")
        );
    }
    out
}

fn detail(s: &ServiceStatus) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(why) = &s.detail {
        parts.push(why.clone());
    }
    if !s.lag.is_empty() {
        let lag: Vec<String> = s
            .lag
            .iter()
            .map(|(p, l)| match s.behind_seconds.get(p) {
                Some(behind) => format!("{p}:{l} (behind {behind:.0} s)"),
                None => format!("{p}:{l}"),
            })
            .collect();
        parts.push(format!("lag {}", lag.join(" ")));
    }
    if let Some(n) = s.parked_products {
        parts.push(format!("{n} parked"));
    }
    if let Some(n) = s.dead_letters {
        parts.push(format!("{n} dead-lettered"));
    }
    if s.name.starts_with("producer") && s.up {
        let ago = |x: Option<f64>| x.map_or("never".to_owned(), |s| format!("{s:.0} s ago"));
        parts.push(format!(
            "last commit {}, last snapshot {}, {} unknown outcomes",
            ago(s.last_commit_seconds_ago),
            ago(s.last_snapshot_seconds_ago),
            s.commits_with_unknown_outcome.unwrap_or(0.0)
        ));
    }
    if let Some(n) = s.sse_clients {
        parts.push(format!("{n} SSE clients"));
    }
    parts.join("; ")
}
