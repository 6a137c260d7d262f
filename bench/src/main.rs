//! Baselines that `scripts/bench` runs beside Foldline, so every figure it prints comes with
//! the limit of the part underneath it:
//! - `raw-produce`: a bare rdkafka producer with the producer's durability settings
//!   (acks=all, idempotence) sending records of the same size: the broker's limit.
//! - `bare-http`: an axum server that parses the same JSON bodies as the producer and answers
//!   without producing: the HTTP stack's limit under the same load generator.

mod bare_http;
mod raw_produce;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "foldline-bench", about = "Baselines for scripts/bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send records straight to the broker and print one JSON line of rate and latency.
    RawProduce(raw_produce::Args),
    /// Serve POST /products and POST /commands that only parse the body and answer.
    BareHttp(bare_http::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    foldline_service::telemetry::init("warn");
    match Cli::parse().command {
        Command::RawProduce(args) => raw_produce::run(args).await,
        Command::BareHttp(args) => bare_http::run(args).await,
    }
}
