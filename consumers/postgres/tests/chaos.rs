//! The chaos run (issue 13; what it does and checks: `common/chaos.rs`) with one producer.
//! Part of `scripts/test`; `scripts/chaos` runs it alone on a stack of its own, with more
//! rounds and as many producers as asked, and shows its figures.

mod common;

/// One producer (`single` mode), or `FOLDLINE_CHAOS_PRODUCERS` of them (`scripts/chaos`).
#[tokio::test]
async fn chaos_kills_lose_and_double_nothing() {
    let fleet_size = std::env::var("FOLDLINE_CHAOS_PRODUCERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    common::chaos::run(fleet_size).await;
}
