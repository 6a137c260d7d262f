use clap::Parser;
use foldline_producer::{run, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    foldline_service::telemetry::init("info,rdkafka::client=off,librdkafka=warn");
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    run(config, listener, foldline_service::shutdown::signal()).await
}
