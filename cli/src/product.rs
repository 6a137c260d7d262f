//! `foldline product show|history`: a product from the query API — as it is, as it was at a
//! time or position (`--as-of`), or its whole history (every page, as JSON lines).

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::parked::encode;

#[derive(Args)]
pub struct ProductArgs {
    /// The query API.
    #[arg(
        long,
        global = true,
        env = "FOLDLINE_QUERY_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    query_url: String,
    /// A token for the query API when its reads need one (`FOLDLINE_READS_REQUIRE_TOKEN`).
    #[arg(long, global = true, env = "FOLDLINE_READ_TOKEN")]
    token: Option<String>,
    #[command(subcommand)]
    command: ProductCommand,
}

#[derive(Subcommand)]
enum ProductCommand {
    /// The product now, or `--as-of` an RFC 3339 time or a position `P:O`, as JSON.
    Show {
        id: String,
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Every event of the product in version order, one JSON line each.
    History {
        id: String,
        /// The first version to print.
        #[arg(long, default_value_t = 1)]
        from_version: i64,
    },
}

pub async fn run(args: ProductArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let base = args.query_url.trim_end_matches('/');
    let get = |path: String, query: Vec<(&'static str, String)>| {
        let mut request = client.get(format!("{base}{path}")).query(&query);
        if let Some(token) = &args.token {
            request = request.bearer_auth(token);
        }
        request
    };
    match args.command {
        ProductCommand::Show { id, as_of } => {
            let query = as_of.map(|a| ("as_of", a)).into_iter().collect();
            let body = answer(get(format!("/products/{}", encode(&id)), query)).await?;
            println!("{body}");
        }
        ProductCommand::History { id, from_version } => {
            let mut from = Some(from_version);
            while let Some(version) = from {
                let query = vec![
                    ("from_version", version.to_string()),
                    ("limit", "1000".into()),
                ];
                let page = answer(get(format!("/products/{}/history", encode(&id)), query)).await?;
                for event in page["events"].as_array().into_iter().flatten() {
                    println!("{event}");
                }
                from = page["next_from_version"].as_i64();
            }
        }
    }
    Ok(())
}

/// The JSON body of a 2xx answer; the problem's detail otherwise.
async fn answer(request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let response = request.send().await.context("asking the query API")?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "{status}: {}",
            body["detail"].as_str().unwrap_or("the query API refused")
        );
    }
    Ok(body)
}
