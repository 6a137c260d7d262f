//! Tracing set-up shared by all binaries.

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber, writing to stderr (stdout is for a program's output: the
/// CLI's JSON lines, a benchmark's figures). `FOLDLINE_LOG_FORMAT=json` switches to JSON lines.
/// Safe to call more than once (tests start several services in one process).
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("FOLDLINE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let result = if json {
        fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .json()
            .try_init()
    } else {
        fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init()
    };
    // An error only means a subscriber is already installed, which is fine.
    let _ = result;
}
