//! Settings several binaries share, declared once and flattened into each one's clap config.

/// Where the events are: the Kafka brokers, the schema registry and the products topic.
#[derive(clap::Args, Debug, Clone)]
pub struct EventLog {
    /// Kafka bootstrap servers.
    #[arg(long, env = "FOLDLINE_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Schema registry (Confluent REST API).
    #[arg(
        long,
        env = "FOLDLINE_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub registry_url: String,
    /// The products topic.
    #[arg(long, env = "FOLDLINE_TOPIC", default_value = "products")]
    pub topic: String,
}
