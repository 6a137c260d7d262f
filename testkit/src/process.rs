//! Foldline binaries as real child processes, for tests that kill -9 or restart them.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free loopback port (bound and released; fine for tests that start right away).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The path of a workspace binary: `$FOLDLINE_<NAME>_BIN` (scripts/test exports them), else
/// `target/debug/<name>` next to the test executable.
pub fn binary(name: &str) -> String {
    // A path names its binary itself (the upgrade drill runs two builds side by side).
    if name.contains('/') {
        return name.to_owned();
    }
    let var = format!(
        "FOLDLINE_{}_BIN",
        name.trim_start_matches("foldline-")
            .replace('-', "_")
            .to_uppercase()
    );
    std::env::var(&var).unwrap_or_else(|_| {
        let exe = std::env::current_exe().unwrap();
        // target/debug/deps/<test> → target/debug/<name>
        exe.parent()
            .unwrap()
            .parent()
            .unwrap()
            .join(name)
            .to_string_lossy()
            .into_owned()
    })
}

/// A binary of this workspace started by a test, stopped (and its port freed) on drop.
pub struct Spawned {
    pub name: String,
    /// `http://127.0.0.1:<port>` of the port given in `listen_var`.
    pub url: String,
    child: Option<Child>,
}

impl Spawned {
    /// Starts a producer writing to `topic` under a transactional id of its own, so tests
    /// running side by side never fence each other.
    pub async fn producer(topic: &str) -> Spawned {
        Spawned::start(
            "foldline-producer",
            "FOLDLINE_PRODUCER_LISTEN",
            &[
                ("FOLDLINE_TOPIC", topic.to_owned()),
                ("FOLDLINE_TRANSACTIONAL_ID", crate::unique("producer")),
            ],
        )
        .await
    }

    /// Starts `bin` with `env`, listening where `listen_var` says (a free port), and waits
    /// until `GET /ready` answers 200.
    pub async fn start(bin: &str, listen_var: &str, env: &[(&str, String)]) -> Spawned {
        Self::start_args(bin, &[], listen_var, env).await
    }

    pub async fn start_args(
        bin: &str,
        args: &[&str],
        listen_var: &str,
        env: &[(&str, String)],
    ) -> Spawned {
        let port = free_port();
        let mut env = env.to_vec();
        env.push((listen_var, format!("127.0.0.1:{port}")));
        let service = Spawned::spawn(bin, args, &env, port);
        service.wait_ready(Duration::from_secs(60)).await;
        service
    }

    /// Starts `bin` whose ops port is `port` (set in `env`) without waiting for readiness.
    pub fn spawn(bin: &str, args: &[&str], env: &[(&str, String)], port: u16) -> Spawned {
        let mut command = Command::new(binary(bin));
        command
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("FOLDLINE_TEST_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            // Producers refuse to start without a way to check tokens; tests mint with this.
            .env("FOLDLINE_JWT_SECRET", crate::auth::secret())
            .stdin(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        Spawned {
            name: bin.to_owned(),
            url: format!("http://127.0.0.1:{port}"),
            child: Some(child),
        }
    }

    pub async fn wait_ready(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(r) = reqwest::get(format!("{}/ready", self.url)).await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} not ready in {limit:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `GET /ready` answers 503 (a dependency is down); panics with `why` after
    /// `limit`.
    pub async fn wait_not_ready(&self, limit: Duration, why: &str) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(r) = reqwest::get(format!("{}/ready", self.url)).await {
                if r.status() == 503 {
                    return;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "{why}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The text of the process's `/metrics` (panics when it does not answer).
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The label values `label` of the samples of `name` whose value is 1 (e.g. the
    /// partitions a producer serves: `producer_partition_served`, `partition`).
    pub async fn labels_set(&self, name: &str, label: &str) -> Vec<String> {
        let text = self.metrics_text().await;
        let prefix = format!("{name}{{{label}=\"");
        text.lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|rest| rest.split_once("\"} "))
            .filter(|(_, value)| value.trim() == "1")
            .map(|(label, _)| label.to_owned())
            .collect()
    }

    /// The value of the Prometheus sample `name` (no labels) on `/metrics`; 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .map_or(0.0, |v| v.parse().unwrap())
    }

    /// The process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The process's resident memory (`VmRSS`), in KiB; 0 once it has exited.
    pub fn rss_kib(&self) -> u64 {
        let Some(child) = &self.child else { return 0 };
        std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Open file descriptors of the process (sockets included).
    pub fn open_fds(&self) -> usize {
        let Some(child) = &self.child else { return 0 };
        std::fs::read_dir(format!("/proc/{}/fd", child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Whether the process is still running (false once it exited, or was killed here).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// SIGKILL, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a graceful exit; true when it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        child.wait().map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A service restarted on the same port with the same settings after a crash, as a process
/// supervisor would (clients only see refused connections meanwhile).
pub struct Restartable {
    bin: &'static str,
    env: Vec<(&'static str, String)>,
    port: u16,
    pub service: Spawned,
}

impl Restartable {
    /// Starts `bin` with `env` on a free port (given in `listen_var`) and waits for `/ready`.
    pub async fn start(
        bin: &'static str,
        listen_var: &'static str,
        mut env: Vec<(&'static str, String)>,
    ) -> Restartable {
        let port = free_port();
        env.push((listen_var, format!("127.0.0.1:{port}")));
        let service = Spawned::spawn(bin, &[], &env, port);
        service.wait_ready(Duration::from_secs(60)).await;
        Restartable {
            bin,
            env,
            port,
            service,
        }
    }

    /// The producer on `topic` with a transactional id of its own, snapshotting every second
    /// so that restarts under load load a snapshot plus the tail.
    pub async fn producer(topic: &str) -> Restartable {
        Restartable::fleet_member(topic, &crate::unique("producer"), false).await
    }

    /// A producer of the fleet `transactional_id`; with `share`, in `partitions` mode (the
    /// fleet's instances share the partitions).
    pub async fn fleet_member(topic: &str, transactional_id: &str, share: bool) -> Restartable {
        let ownership = if share { "partitions" } else { "single" };
        Restartable::start(
            "foldline-producer",
            "FOLDLINE_PRODUCER_LISTEN",
            vec![
                ("FOLDLINE_TOPIC", topic.to_owned()),
                ("FOLDLINE_TRANSACTIONAL_ID", transactional_id.to_owned()),
                ("FOLDLINE_PRODUCER_OWNERSHIP", ownership.to_owned()),
                ("FOLDLINE_SNAPSHOT_INTERVAL_SECS", "1".into()),
            ],
        )
        .await
    }

    /// SIGKILL, start again at once; returns the seconds until `/ready`.
    pub async fn kill_and_restart(&mut self) -> f64 {
        self.service.kill();
        let killed = std::time::Instant::now();
        self.service = Spawned::spawn(self.bin, &[], &self.env, self.port);
        self.service.wait_ready(Duration::from_secs(120)).await;
        killed.elapsed().as_secs_f64()
    }

    pub fn kill(&mut self) {
        self.service.kill();
    }
}
