//! `foldline parked list|retry|drop`: the records a consumer parked (a record its sink
//! refused for good, and every later record of the same product), through each consumer's
//! ops routes. A retry reads them again from the log and applies them in order, exactly once;
//! a drop gives them up. Both are done by the consumer itself, between two batches.

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Args)]
pub struct ParkedArgs {
    /// Ops URLs of the consumers to ask (comma-separated); the local stack's projector and
    /// recent-events consumer by default (the archiver never parks: it keeps any record).
    #[arg(
        long,
        global = true,
        env = "FOLDLINE_PARKING_CONSUMERS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:9101,http://127.0.0.1:9103"
    )]
    consumers: Vec<String>,
    #[command(subcommand)]
    command: ParkedCommand,
}

#[derive(Subcommand)]
enum ParkedCommand {
    /// Every parked record, per consumer, as JSON lines.
    List,
    /// Applies a product's parked records again, in order (once fixed); exit 1 if still refused.
    Retry { product_id: String },
    /// Gives up a product's parked records; its later records flow again.
    Drop { product_id: String },
}

pub async fn run(args: ParkedArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let mut failed = false;
    for consumer in &args.consumers {
        let base = consumer.trim_end_matches('/');
        let request = match &args.command {
            ParkedCommand::List => client.get(format!("{base}/parked")),
            ParkedCommand::Retry { product_id } => {
                client.post(format!("{base}/parked/{}/retry", encode(product_id)))
            }
            ParkedCommand::Drop { product_id } => {
                client.post(format!("{base}/parked/{}/drop", encode(product_id)))
            }
        };
        let response = request
            .send()
            .await
            .with_context(|| format!("asking the consumer at {base}"))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match (&args.command, status.is_success()) {
            (ParkedCommand::List, true) => {
                for entry in body.as_array().into_iter().flatten() {
                    let mut line = serde_json::json!({"consumer": base});
                    line.as_object_mut()
                        .expect("an object")
                        .extend(entry.as_object().cloned().unwrap_or_default());
                    println!("{line}");
                }
            }
            (_, true) => println!("{}", serde_json::json!({"consumer": base, "result": body})),
            // A product parked by one consumer only: the others have nothing to do.
            (ParkedCommand::Retry { .. } | ParkedCommand::Drop { .. }, false)
                if body["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("has no parked records")) =>
            {
                eprintln!("{base}: {}", body["detail"].as_str().unwrap_or_default());
            }
            (_, false) => {
                failed = true;
                eprintln!(
                    "{base}: {status}: {}",
                    body["detail"].as_str().unwrap_or(&body.to_string())
                );
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

/// A product id as one URL path segment.
/// A product id as one URL path segment.
pub fn encode(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
