//! # Layout
//! A schema registry speaking the part of Confluent's REST API that Confluent's own clients
//! use, for machines where no Confluent-API registry can be installed (Redpanda's built-in one
//! takes its place in the Docker set-up).
//! - [`model`]: state and rules (ids, versions, compatibility), pure and unit-tested.
//! - [`log`]: persistence in a Kafka topic, replayed at start-up.
//! - [`http`]: the REST routes and Confluent's error bodies.

pub mod http;
pub mod log;
pub mod model;

use std::sync::Arc;

use clap::Parser;
use foldline_service::ops::Ops;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, RwLock};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "foldline-schema-registry",
    version,
    about = "Confluent-API schema registry backed by a Kafka topic"
)]
pub struct Config {
    /// Kafka bootstrap servers.
    #[arg(long, env = "FOLDLINE_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Address to listen on.
    #[arg(
        long,
        env = "FOLDLINE_REGISTRY_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub listen: String,
    /// Topic that stores the schemas.
    #[arg(long, env = "FOLDLINE_REGISTRY_TOPIC", default_value = "_schemas")]
    pub topic: String,
    /// How admin tokens for writes (register, config) are checked: the producer's settings.
    #[command(flatten)]
    pub auth: foldline_service::auth::AuthConfig,
}

/// Loads the registry from its topic and serves it until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let auth = Arc::new(foldline_service::auth::Authenticator::new(&config.auth)?);
    let (log, registry) = log::SchemaLog::open(&config.brokers, &config.topic).await?;
    let state = Arc::new(http::AppState {
        registry: RwLock::new(registry),
        log,
        write_lock: Mutex::new(()),
    });
    // The registry only answers once its state is loaded, so it is ready while it runs.
    let ops = Ops::new(
        "schema-registry",
        env!("CARGO_PKG_VERSION"),
        Arc::new(|| Box::pin(async { Ok(()) })),
    );
    let app = ops.instrument(http::routes(state, auth).merge(ops.routes()));
    foldline_service::serve::serve(listener, app, shutdown).await?;
    Ok(())
}
