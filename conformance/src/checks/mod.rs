//! Every check, in the order the suite runs them.

mod crash;
mod idempotence;
mod long_poll;
mod offsets;
mod transactions;

use crate::Check;

pub fn all() -> Vec<Check> {
    vec![
        Check {
            name: "read_committed_hides_aborted_transactions",
            promise: "a read_committed reader never sees a record of an aborted transaction: three producers interleaved over three partitions, each transaction aborted after every record was acknowledged",
            needs_own_broker: false,
            run: transactions::hides_aborted,
        },
        Check {
            name: "read_committed_holds_back_open_transactions",
            promise: "a read_committed reader stops at the last stable offset: nothing at or after an open transaction's first record, even another producer's committed records, until it ends",
            needs_own_broker: false,
            run: transactions::holds_back_open,
        },
        Check {
            name: "zombie_producer_is_fenced_by_transactional_id",
            promise: "a new instance of a transactional.id fences the old one: the old instance cannot commit, and its open transaction is aborted",
            needs_own_broker: false,
            run: transactions::fences_zombie,
        },
        Check {
            name: "watermarks_and_list_offsets_count_commit_markers",
            promise: "the high watermark counts commit markers, ListOffsets at read_committed answers the last stable offset, and a reader's position after a transaction is past its marker",
            needs_own_broker: false,
            run: offsets::watermarks,
        },
        Check {
            name: "offsets_sent_in_a_transaction_commit_with_it",
            promise: "consumer offsets sent in a transaction are committed with its records and dropped with an abort",
            needs_own_broker: false,
            run: offsets::transactional_offsets,
        },
        Check {
            name: "fetch_long_polls_until_data_or_max_wait",
            promise: "a fetch that finds no records waits up to its max wait (a few requests a second for an idle reader), and answers as soon as records are committed",
            needs_own_broker: false,
            run: long_poll::long_polls,
        },
        Check {
            name: "idempotent_produce_deduplicates_a_retried_batch",
            promise: "a Produce request sent twice (a retry after a lost answer: same producer id, epoch and sequence) is stored once, inside and outside transactions",
            needs_own_broker: true,
            run: idempotence::deduplicates_retry,
        },
        Check {
            name: "broker_sigkill_leaves_transactions_whole",
            promise: "after a SIGKILL of the broker with a transaction open, or in the middle of its commit, and a restart, every transaction is visible whole or not at all, and every acknowledged commit is kept",
            needs_own_broker: true,
            run: crash::sigkill_keeps_transactions_whole,
        },
    ]
}
