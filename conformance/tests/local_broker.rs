//! The conformance suite against the local log's broker (FOLDLINE_BROKER_BIN), one test per
//! promise, each on a broker of its own that it may kill.

use foldline_conformance::{checks, run_check, Outcome, Target};

fn check(name: &str) {
    let check = checks::all()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check named {name}"));
    let target = Target::own().expect("start a broker of the suite's own");
    let report = run_check(&check, &target);
    match report.outcome {
        Outcome::Passed => {}
        Outcome::Failed { reason } | Outcome::NotRun { reason } => panic!("{name}: {reason}"),
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        $( #[test] fn $name() { check(stringify!($name)); } )*

        /// Every check of the suite has a test here.
        #[test]
        fn every_check_is_tested() {
            let tested = [$(stringify!($name)),*];
            for check in checks::all() {
                assert!(tested.contains(&check.name), "{} has no test", check.name);
            }
        }
    };
}

conformance!(
    read_committed_hides_aborted_transactions,
    read_committed_holds_back_open_transactions,
    zombie_producer_is_fenced_by_transactional_id,
    watermarks_and_list_offsets_count_commit_markers,
    offsets_sent_in_a_transaction_commit_with_it,
    fetch_long_polls_until_data_or_max_wait,
    idempotent_produce_deduplicates_a_retried_batch,
    broker_sigkill_leaves_transactions_whole,
);
