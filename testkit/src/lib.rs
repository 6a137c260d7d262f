//! # Layout
//! Integration tests run against the real servers that `scripts/test` starts. This crate
//! tells them where those servers are (from the environment, defaulting to the local stack)
//! and gives them random names so runs never collide.

use std::process::Command;

pub mod audit;
pub mod auth;
pub mod dynamodb;
pub mod future_schema;
pub mod load;
pub mod own_server;
pub mod postgres;
pub mod process;
pub mod prometheus;
pub mod s3;
pub mod sse;
pub mod writes;

/// Kafka bootstrap servers of the stack under test.
pub fn brokers() -> String {
    std::env::var("FOLDLINE_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Schema registry URL of the stack under test.
pub fn registry_url() -> String {
    std::env::var("FOLDLINE_REGISTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into())
}

/// GETs `url` with `client` and parses the answer as JSON; panics (the test fails) with the
/// status and body when the answer is not a 2xx.
pub async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    let answer = client.get(url).send().await.unwrap();
    let status = answer.status();
    let body = answer.text().await.unwrap();
    assert!(status.is_success(), "GET {url}: {status} {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"))
}

/// A name no other test run uses: `prefix-<random>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Binds 127.0.0.1 on a free port.
pub async fn listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// A broker of its own for a test that stops and restarts it: the local log's binary
/// (`FOLDLINE_BROKER_BIN`, exported by `scripts/test`) with its log in a SQLite file of its own
/// under `FOLDLINE_TEST_DATA`, so it survives a kill.
pub struct OwnBroker(pub own_server::OwnServer);

impl OwnBroker {
    pub fn start() -> OwnBroker {
        Self::start_with(None)
    }

    /// A broker that tells clients to connect to `port` (a proxy in front of it) instead of
    /// its own listener.
    pub fn start_advertising(port: u16) -> OwnBroker {
        Self::start_with(Some(port))
    }

    fn start_with(advertised: Option<u16>) -> OwnBroker {
        OwnBroker(own_server::OwnServer::start(
            "own-broker",
            move |dir, port| {
                std::fs::create_dir_all(dir.join("broker")).unwrap();
                let url = format!("tcp://127.0.0.1:{port}");
                let advertised = format!("tcp://127.0.0.1:{}", advertised.unwrap_or(port));
                // nisshi resolves the sqlite:// URL against its working directory.
                let mut command = Command::new(own_server::binary("FOLDLINE_BROKER_BIN", "nisshi"));
                command.current_dir(dir).args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &advertised,
                    "--storage-engine",
                    "sqlite://broker/log.db",
                ]);
                command
            },
        ))
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.0.port)
    }

    /// Starts the broker process again on the same port and log file.
    pub fn resume(&mut self) {
        self.0.resume();
    }

    /// Kills the broker (SIGKILL), like a crash.
    pub fn kill(&mut self) {
        self.0.kill();
    }
}

/// Every committed record of `topic` on `brokers`, in log order per partition.
pub async fn read_all(brokers: &str, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    let mut records = Vec::new();
    foldline_service::kafka::read_to_end(brokers, "test-reader", topic, &Default::default(), |m| {
        records.push(m);
        std::future::ready(())
    })
    .await
    .expect("read the topic to its end");
    records
}
