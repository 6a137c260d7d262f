//! The chaos run (see `chaos.rs`) with three producers sharing the topic's partitions
//! (`FOLDLINE_PRODUCER_OWNERSHIP=partitions`, issue 16): each producer kill hits one of them,
//! its partitions move to the others, and still nothing acknowledged is lost or doubled.

mod common;

#[tokio::test]
async fn chaos_with_three_producers_sharing_the_partitions_loses_and_doubles_nothing() {
    common::chaos::run(3).await;
}
