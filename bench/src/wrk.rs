//! HTTP load from `wrk` (Debian's), keep-alive connections posting one JSON body, read back
//! from the JSON line `scripts/lib/wrk/post.lua` prints when wrk is done.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What `post.lua`'s `done()` prints.
#[derive(Deserialize)]
struct Done {
    requests: u64,
    duration_us: u64,
    non_2xx: u64,
    socket_errors: u64,
    p50_us: u64,
    p99_us: u64,
}

/// One wrk run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrkRun {
    pub connections: usize,
    pub seconds: f64,
    /// Requests answered 2xx per second (the others are counted, not rated).
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub non_2xx: u64,
    pub socket_errors: u64,
}

pub struct Load<'a> {
    pub repo: &'a Path,
    pub url: String,
    pub body: PathBuf,
    pub connections: usize,
    pub seconds: u64,
    pub token: &'a str,
}

pub async fn run(load: &Load<'_>) -> anyhow::Result<WrkRun> {
    let script = load.repo.join("scripts/lib/wrk/post.lua");
    let out = tokio::process::Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{}", load.connections),
            &format!("-d{}s", load.seconds),
        ])
        .arg("-s")
        .arg(&script)
        .arg(&load.url)
        .env("BODY_FILE", &load.body)
        .env("TOKEN", load.token)
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "wrk {}: {}: {text}",
        load.url,
        out.status
    );
    let last = text.lines().last().unwrap_or_default();
    let done: Done = serde_json::from_str(last)
        .map_err(|e| anyhow::anyhow!("wrk printed {last:?} last: {e}"))?;
    let seconds = done.duration_us as f64 / 1e6;
    Ok(WrkRun {
        connections: load.connections,
        seconds,
        rate: done.requests.saturating_sub(done.non_2xx) as f64 / seconds.max(1e-9),
        p50_ms: done.p50_us as f64 / 1000.0,
        p99_ms: done.p99_us as f64 / 1000.0,
        non_2xx: done.non_2xx,
        socket_errors: done.socket_errors,
    })
}
