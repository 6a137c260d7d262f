//! # Layout
//! Integration tests run against the real servers that `scripts/test` starts. This crate
//! tells them where those servers are (from the environment, defaulting to the local stack)
//! and gives them random names so runs never collide.

use std::process::{Child, Command};
use std::time::Duration;

pub mod audit;
pub mod auth;
pub mod load;
pub mod postgres;
pub mod process;
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

/// A name no other test run uses: `prefix-<random>`.
/// GETs `url` with `client` and parses the answer as JSON; panics (the test fails) with the
/// status and body when the answer is not a 2xx.
pub async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    let answer = client.get(url).send().await.unwrap();
    let status = answer.status();
    let body = answer.text().await.unwrap();
    assert!(status.is_success(), "GET {url}: {status} {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"))
}

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
pub struct OwnBroker {
    pub port: u16,
    /// Folder the broker runs in; its log is `broker/log.db` inside it.
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl OwnBroker {
    pub fn start() -> OwnBroker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = std::env::var("FOLDLINE_TEST_DATA").unwrap_or_else(|_| "/tmp".into());
        let dir = std::path::Path::new(&base).join(unique("own-broker"));
        std::fs::create_dir_all(dir.join("broker")).unwrap();
        let mut broker = OwnBroker {
            port,
            dir,
            child: None,
        };
        broker.resume();
        broker
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker process (again) on the same port and log file.
    pub fn resume(&mut self) {
        let bin = std::env::var("FOLDLINE_BROKER_BIN").unwrap_or_else(|_| "nisshi".into());
        let url = format!("tcp://127.0.0.1:{}", self.port);
        // nisshi resolves the sqlite:// URL against its working directory.
        let child = Command::new(bin)
            .current_dir(&self.dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "sqlite://broker/log.db",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the broker (set FOLDLINE_BROKER_BIN)");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the broker did not listen on {}", self.port);
    }

    /// Kills the broker (SIGKILL), like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kill();
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
