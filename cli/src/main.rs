//! `foldline`: the operator's command line. Topics (list, describe with group lag, consume
//! decoded in the shape of `rpk topic consume`), schemas (register, list, check), the
//! dead-letter topic (list, replay), tokens for the write API (mint) and the front door to
//! projection rebuilds.

mod dlq;
mod parked;
mod product;
mod registry;
mod status;
mod token;
mod topic;
mod verify;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "foldline", version, about = "Foldline operator CLI")]
pub struct Cli {
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
    /// Topics: create, list, describe, consume.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Schemas in the registry: register, list, check.
    #[command(subcommand)]
    Schema(registry::SchemaCommand),
    /// The dead-letter topic: list, replay.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Products a consumer parked: list, retry, drop.
    Parked(parked::ParkedArgs),
    /// A product from the query API: now, as of a time or position, or its whole history.
    Product(product::ProductArgs),
    /// Tokens for the write API.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Check that the read model equals the fold of the log at its own offsets (exit 1 on a
    /// difference).
    Verify(verify::VerifyArgs),
    /// One screen: each service up and ready, consumers' lag, parked products, dead letters,
    /// the producer's last commit and snapshot, Prometheus's alerts; exit 1 unless all is well.
    Status(status::StatusArgs),
    /// Rebuild a projection from the log (runs `foldline-projector replay` for `postgres`).
    Replay {
        /// The projection to rebuild: postgres.
        projection: String,
        /// Arguments passed on to the rebuild (see `foldline-projector replay --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Sign an HS256 token with the producer's secret and print it.
    Mint(token::MintArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    foldline_service::telemetry::init("warn,rdkafka::client=off");
    let cli = Cli::parse();
    match cli.command {
        Commands::Topic(command) => topic::run(command, &cli.brokers, &cli.registry_url).await,
        Commands::Schema(command) => registry::run(command, &cli.registry_url).await,
        Commands::Dlq(command) => dlq::run(command, &cli.brokers, &cli.registry_url).await,
        Commands::Token(TokenCommand::Mint(args)) => token::mint(args),
        Commands::Parked(args) => parked::run(args).await,
        Commands::Product(args) => product::run(args).await,
        Commands::Verify(args) => verify::run(args, &cli.brokers, &cli.registry_url).await,
        Commands::Status(args) => status::run(args).await,
        Commands::Replay { projection, args } => replay(&projection, &args),
    }
}

/// The rebuild commands live with their projections; this finds them next to `foldline`.
fn replay(projection: &str, args: &[String]) -> anyhow::Result<()> {
    let binary = match projection {
        "postgres" => "foldline-projector",
        other => anyhow::bail!("unknown projection {other:?}: known are postgres (dynamodb and s3 come with their consumers)"),
    };
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .map(|dir| dir.join(binary))
        .filter(|p| p.exists());
    let program = path.map_or_else(|| binary.into(), |p| p.into_os_string());
    let status = std::process::Command::new(&program)
        .arg("replay")
        .args(args)
        .status()
        .map_err(|e| {
            anyhow::anyhow!(
                "running {binary}: {e} (build it with cargo build -p foldline-projector)"
            )
        })?;
    anyhow::ensure!(status.success(), "{binary} replay failed ({status})");
    Ok(())
}
