//! The request path over a scripted log: what happens to a request, its key and the state
//! when the log commits, holds, aborts, loses track of a commit or fences — no broker.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::domain::Role;
use crate::log::scripted::{Outcome, ScriptedLog};
use crate::log::Position;
use crate::partitioning::Mode;

/// One lane of the partitions `served`, over a scripted log.
struct OneLane {
    policy: PartitionPolicy,
    served: Vec<i32>,
    log: Arc<ScriptedLog>,
}

impl Routes for OneLane {
    fn policy(&self) -> PartitionPolicy {
        self.policy
    }

    fn route(&self, partition: i32) -> BoxFuture<'_, Route> {
        let route = if self.served.contains(&partition) {
            let log: Arc<dyn LaneLog> = self.log.clone();
            Route::Here(HeldLane::new(log, ()))
        } else {
            Route::Elsewhere {
                owner: Some("http://other".into()),
            }
        };
        async move { route }.boxed()
    }

    fn partition_for_new(&self) -> i32 {
        self.served[0]
    }
}

struct Given {
    handler: Arc<CommandHandler>,
    log: Arc<ScriptedLog>,
    store: Arc<Store>,
}

impl Given {
    /// Creates `name` with Idempotency-Key `key` in a task of its own (a caller that may go).
    fn spawn_create(
        &self,
        name: &str,
        key: &str,
    ) -> tokio::task::JoinHandle<Result<Vec<Answer>, WriteError>> {
        let handler = self.handler.clone();
        let (name, key) = (name.to_owned(), key.to_owned());
        tokio::spawn(async move {
            handler
                .execute(vec![create(&name)], admin(Some(&key)))
                .await
        })
    }
}

fn given_single() -> Given {
    given(Mode::Single, &[0, 1, 2])
}

fn given(mode: Mode, served: &[i32]) -> Given {
    let policy = PartitionPolicy::new(mode, 3);
    let log = Arc::new(ScriptedLog::new(policy));
    let store = Arc::new(Store::new(60_000));
    let routes = Arc::new(OneLane {
        policy,
        served: served.to_vec(),
        log: log.clone(),
    });
    let metrics = crate::metrics::Metrics::new(&prometheus::Registry::new());
    let handler = Arc::new(CommandHandler::new(store.clone(), routes, metrics, 10));
    Given {
        handler,
        log,
        store,
    }
}

fn admin(key: Option<&str>) -> RequestMeta {
    RequestMeta {
        actor: Actor {
            subject: "root".into(),
            role: Role::Admin,
        },
        idempotency_key: key.map(str::to_owned),
        correlation_id: "c".into(),
        traceparent: "t".into(),
    }
}

fn create(name: &str) -> PlannedCommand {
    PlannedCommand {
        product_id: None,
        command: Command::Create {
            name: name.into(),
            price_cents: 100,
            stock: 50,
            seller_id: "s1".into(),
            low_stock_threshold: None,
        },
        expected_version: None,
    }
}

fn adjust(id: &str, delta: i64) -> PlannedCommand {
    PlannedCommand {
        product_id: Some(id.into()),
        command: Command::AdjustStock {
            delta,
            reason: None,
        },
        expected_version: None,
    }
}

async fn version_of(store: &Store, id: &str) -> Option<i64> {
    let slot = store.product(id)?;
    let product = slot.lock().await;
    product.as_ref().map(|p| p.version)
}

#[tokio::test]
async fn given_a_commit_when_a_command_runs_then_answered_with_its_position_and_folded() {
    let g = given_single();
    let answers = g
        .handler
        .execute(vec![create("a")], admin(None))
        .await
        .unwrap();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].version, 1);
    assert_eq!(g.log.events().len(), 1);
    assert_eq!(version_of(&g.store, &answers[0].id).await, Some(1));
    let position: Position = answers[0].position.parse().unwrap();
    assert_eq!(g.store.next_offsets().get(position.partition), Some(1));
}

#[tokio::test]
async fn given_a_commit_under_way_when_the_same_key_is_retried_then_it_waits_and_gets_the_first_answer(
) {
    let g = given_single();
    let (release, held) = oneshot::channel();
    g.log.then(Outcome::Hold(held));
    let appending = g.log.appending.notified();
    let first = g.spawn_create("a", "k");
    appending.await;
    let retry = g.spawn_create("a", "k");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !retry.is_finished(),
        "the retry waits for the first try's outcome"
    );
    release.send(()).unwrap();
    let first = first.await.unwrap().unwrap();
    let retry = retry.await.unwrap().unwrap();
    assert_eq!(first, retry);
    assert_eq!(g.log.events().len(), 1, "appended once");
}

#[tokio::test]
async fn given_an_unknown_outcome_when_the_tail_is_read_then_the_retry_gets_the_landed_answer() {
    let g = given_single();
    g.log.then(Outcome::Unknown { landed: true });
    let closed = CancellationToken::new();
    tokio::spawn(crate::log::keep_reading_the_tail(
        g.log.clone(),
        g.store.clone(),
        closed.clone(),
    ));
    let error = g
        .handler
        .execute(vec![create("a")], admin(Some("k")))
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        WriteError::Append(AppendError::OutcomeUnknown(_))
    ));
    // The lane refuses writes until the tail is read, then takes them again.
    wait_until(|| g.log.status().is_ok()).await;
    let landed = g.log.events()[0].product_id.clone();
    assert_eq!(
        version_of(&g.store, &landed).await,
        Some(1),
        "folded from the tail"
    );
    let retry = g
        .handler
        .execute(vec![create("a")], admin(Some("k")))
        .await
        .unwrap();
    assert_eq!(retry[0].id, landed, "the retry is answered what landed");
    assert_eq!(g.log.events().len(), 1, "and not appended twice");
    closed.cancel();
}

#[tokio::test]
async fn given_an_unknown_outcome_that_did_not_land_when_retried_then_decided_again_once() {
    let g = given_single();
    g.log.then(Outcome::Unknown { landed: false });
    let error = g.handler.execute(vec![create("a")], admin(Some("k"))).await;
    assert!(error.is_err());
    let refused = g.handler.execute(vec![create("b")], admin(None)).await;
    assert!(
        matches!(
            refused,
            Err(WriteError::Append(AppendError::Unavailable(_)))
        ),
        "writes wait until the tail was read"
    );
    let closed = CancellationToken::new();
    tokio::spawn(crate::log::keep_reading_the_tail(
        g.log.clone(),
        g.store.clone(),
        closed.clone(),
    ));
    wait_until(|| g.log.status().is_ok()).await;
    let retry = g
        .handler
        .execute(vec![create("a")], admin(Some("k")))
        .await
        .unwrap();
    let events = g.log.events();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.product_id == retry[0].id)
            .count(),
        1
    );
    closed.cancel();
}

#[tokio::test]
async fn given_a_client_gone_mid_commit_when_the_commit_lands_then_state_and_key_know_it() {
    let g = given_single();
    let (release, held) = oneshot::channel();
    g.log.then(Outcome::Hold(held));
    let appending = g.log.appending.notified();
    let caller = g.spawn_create("a", "k");
    appending.await;
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    release.send(()).unwrap();
    wait_until(|| !g.log.events().is_empty()).await;
    let landed = g.log.events()[0].product_id.clone();
    // The request finished without its caller: the retry finds the answer, not a new create.
    let retry = g
        .handler
        .execute(vec![create("a")], admin(Some("k")))
        .await
        .unwrap();
    assert_eq!(retry[0].id, landed);
    assert_eq!(version_of(&g.store, &landed).await, Some(1));
    assert_eq!(g.log.events().len(), 1);
}

#[tokio::test]
async fn given_a_refused_command_then_nothing_appended_and_no_state_left() {
    let g = given_single();
    let over_limit = g
        .handler
        .execute(vec![create(&"x".repeat(201))], admin(Some("k1")))
        .await;
    assert!(matches!(
        over_limit,
        Err(WriteError::Rejected { index: 0, .. })
    ));
    let unknown = g
        .handler
        .execute(vec![adjust("no-such-product", 1)], admin(Some("k2")))
        .await;
    assert!(matches!(
        unknown,
        Err(WriteError::Rejected {
            error: DomainError::NotFound,
            ..
        })
    ));
    assert!(g.log.events().is_empty());
    assert_eq!(g.store.product_count(), 0);
    assert!(!g
        .store
        .is_remembered(&crate::store::scoped_key("root", "k1")));
    assert!(!g
        .store
        .is_remembered(&crate::store::scoped_key("root", "k2")));
}

#[tokio::test]
async fn given_a_batch_with_one_refused_command_then_refused_whole() {
    let g = given_single();
    let existing = g
        .handler
        .execute(vec![create("a")], admin(None))
        .await
        .unwrap();
    let id = existing[0].id.clone();
    let result = g
        .handler
        .execute(
            vec![create("b"), adjust(&id, -10), adjust(&id, -100)],
            admin(Some("k")),
        )
        .await;
    match result {
        Err(WriteError::Rejected { index, error }) => {
            assert_eq!(index, 2);
            assert!(matches!(error, DomainError::InsufficientStock { .. }));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(g.log.events().len(), 1, "only the first create");
    assert_eq!(
        g.store.product_count(),
        1,
        "the refused batch's create left no slot"
    );
    assert_eq!(version_of(&g.store, &id).await, Some(1), "nor a change");
}

#[tokio::test]
async fn given_an_aborted_append_then_nothing_is_left_and_the_key_can_be_retried() {
    let g = given_single();
    g.log.then(Outcome::Abort);
    let failed = g.handler.execute(vec![create("a")], admin(Some("k"))).await;
    assert!(matches!(
        failed,
        Err(WriteError::Append(AppendError::Unavailable(_)))
    ));
    assert_eq!(g.store.product_count(), 0);
    assert!(!g
        .store
        .is_remembered(&crate::store::scoped_key("root", "k")));
    let retry = g.handler.execute(vec![create("a")], admin(Some("k"))).await;
    assert!(retry.is_ok());
    assert_eq!(g.log.events().len(), 1);
}

#[tokio::test]
async fn given_a_fenced_lane_then_writes_are_refused_as_fenced() {
    let g = given_single();
    g.log.then(Outcome::Fenced);
    let first = g.handler.execute(vec![create("a")], admin(None)).await;
    assert!(matches!(
        first,
        Err(WriteError::Append(AppendError::Fenced))
    ));
    let next = g.handler.execute(vec![create("b")], admin(None)).await;
    assert!(matches!(next, Err(WriteError::Append(AppendError::Fenced))));
    assert!(g.log.events().is_empty());
}

#[tokio::test]
async fn given_partitions_mode_when_a_request_belongs_elsewhere_then_answered_with_its_owner() {
    let g = given(Mode::Partitions, &[0]);
    let policy = PartitionPolicy::new(Mode::Partitions, 3);
    let key = (0..)
        .map(|n| format!("k{n}"))
        .find(|k| policy.partition_of(k) != 0)
        .unwrap();
    let result = g
        .handler
        .execute(vec![create("a")], admin(Some(&key)))
        .await;
    match result {
        Err(WriteError::Elsewhere { partition, owner }) => {
            assert_eq!(partition, policy.partition_of(&key));
            assert_eq!(owner.as_deref(), Some("http://other"));
        }
        other => panic!("expected elsewhere, got {other:?}"),
    }
    assert_eq!(g.store.product_count(), 0);
    // Without a key a create goes to a partition served here.
    let here = g
        .handler
        .execute(vec![create("b")], admin(None))
        .await
        .unwrap();
    assert_eq!(policy.partition_of(&here[0].id), 0);
}

async fn wait_until(condition: impl Fn() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 5 s");
}
