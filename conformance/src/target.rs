//! The broker under test: one given by its bootstrap servers, or one the suite starts itself
//! (the local log's binary, `FOLDLINE_BROKER_BIN`), behind a [`Proxy`] and killable.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use foldline_testkit::OwnBroker;
use tokio::runtime::Runtime;

use crate::proxy::Proxy;

pub struct Target {
    kind: Kind,
    /// Drives the admin client and the proxy; checks themselves are synchronous.
    runtime: Runtime,
}

enum Kind {
    Given {
        brokers: String,
    },
    Own {
        broker: Mutex<OwnBroker>,
        proxy: Proxy,
    },
}

impl Target {
    /// A broker somebody else runs: `host:port[,host:port…]`.
    pub fn given(brokers: &str) -> anyhow::Result<Target> {
        Ok(Target {
            kind: Kind::Given {
                brokers: brokers.to_owned(),
            },
            runtime: runtime()?,
        })
    }

    /// A broker of the suite's own, with its log in a folder under `FOLDLINE_TEST_DATA`,
    /// advertising the proxy in front of it so that every connection passes the proxy.
    pub fn own() -> anyhow::Result<Target> {
        let runtime = runtime()?;
        let proxy_port = foldline_testkit::process::free_port();
        let broker = OwnBroker::start_advertising(proxy_port);
        let proxy = runtime.block_on(Proxy::start(proxy_port, broker.0.port))?;
        Ok(Target {
            kind: Kind::Own {
                broker: Mutex::new(broker),
                proxy,
            },
            runtime,
        })
    }

    pub fn is_own(&self) -> bool {
        matches!(self.kind, Kind::Own { .. })
    }

    /// The bootstrap servers clients use (the proxy, for a broker of the suite's own).
    pub fn brokers(&self) -> String {
        match &self.kind {
            Kind::Given { brokers } => brokers.clone(),
            Kind::Own { proxy, .. } => format!("127.0.0.1:{}", proxy.port),
        }
    }

    pub fn proxy(&self) -> anyhow::Result<&Proxy> {
        match &self.kind {
            Kind::Own { proxy, .. } => Ok(proxy),
            Kind::Given { .. } => anyhow::bail!("a given broker has no proxy"),
        }
    }

    /// SIGKILLs the broker, like a crash of its machine's process.
    pub fn kill_broker(&self) -> anyhow::Result<()> {
        match &self.kind {
            Kind::Own { broker, .. } => {
                broker.lock().unwrap().kill();
                Ok(())
            }
            Kind::Given { .. } => anyhow::bail!("the suite cannot kill a broker it did not start"),
        }
    }

    /// Starts the killed broker again on its log.
    pub fn restart_broker(&self) -> anyhow::Result<()> {
        match &self.kind {
            Kind::Own { broker, .. } => {
                broker.lock().unwrap().resume();
                Ok(())
            }
            Kind::Given { .. } => anyhow::bail!("the suite cannot start a broker it did not start"),
        }
    }

    /// Creates a topic of a random name with `partitions` partitions.
    pub fn create_topic(&self, prefix: &str, partitions: i32) -> anyhow::Result<String> {
        let topic = foldline_testkit::unique(&format!("conformance-{prefix}"));
        let brokers = self.brokers();
        self.runtime
            .block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(30),
                    foldline_service::kafka::ensure_topic(&brokers, &topic, partitions, &[]),
                )
                .await
            })
            .context("creating a topic timed out")?
            .with_context(|| format!("create topic {topic}"))?;
        // Wait until the metadata shows every partition, so the first produce finds them.
        let counted = self
            .runtime
            .block_on(foldline_service::kafka::topic_partition_count(
                &brokers, &topic,
            ))?;
        anyhow::ensure!(
            counted == partitions,
            "topic {topic} has {counted} partitions, asked for {partitions}"
        );
        Ok(topic)
    }
}

fn runtime() -> anyhow::Result<Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}
