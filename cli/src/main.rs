//! `foldline`: the operator's command line. Today: creating topics and registering schemas,
//! which `scripts/up` uses to prepare the stack.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Parser)]
#[command(name = "foldline", version, about = "Foldline operator CLI")]
struct Cli {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        global = true,
        env = "FOLDLINE_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    brokers: String,
    /// Schema registry URL.
    #[arg(
        long,
        global = true,
        env = "FOLDLINE_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    registry_url: String,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Schemas in the registry.
    #[command(subcommand)]
    Schema(SchemaCommand),
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic unless it exists (no time-based deletion).
    Create {
        name: String,
        #[arg(long, short, default_value_t = 3)]
        partitions: i32,
    },
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// Register an .avsc file under a subject (fails when incompatible).
    Register {
        subject: String,
        file: std::path::PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Commands::Topic(TopicCommand::Create { name, partitions }) => {
            foldline_service::kafka::ensure_topic(
                &cli.brokers,
                &name,
                partitions,
                &[("retention.ms", "-1")],
            )
            .await
            .with_context(|| format!("creating topic {name} on {}", cli.brokers))?;
            println!("topic {name} ready ({partitions} partitions)");
        }
        Commands::Schema(SchemaCommand::Register { subject, file }) => {
            let schema = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let url = format!(
                "{}/subjects/{subject}/versions",
                cli.registry_url.trim_end_matches('/')
            );
            let response = reqwest::Client::new()
                .post(&url)
                .header("content-type", "application/vnd.schemaregistry.v1+json")
                .json(&json!({"schema": schema}))
                .send()
                .await
                .with_context(|| {
                    format!("the schema registry at {} did not answer", cli.registry_url)
                })?;
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            if !status.is_success() {
                bail!(
                    "registering {subject} failed ({status}): {}",
                    body["message"]
                );
            }
            println!("{subject} registered with id {}", body["id"]);
        }
    }
    Ok(())
}
