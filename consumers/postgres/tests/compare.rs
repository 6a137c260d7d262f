//! The rebuild's comparison in its two steps, on two model schemas written by hand in a real
//! PostgreSQL, so each step's scope is seen exactly: what the snapshot step compares and leaves
//! out, and that the step under the lock compares only the products it is given (and all the
//! sellers and counts).

use foldline_postgres::compare::{compare, Comparison, Scope};
use foldline_postgres::model::ReadModel;
use sqlx::PgConnection;

const GROUP: &str = "g1";
const TOPIC: &str = "products";

/// Given two models that folded partition 0 to `live_next` and `new_next`, with the products
/// and history events each holds.
struct Given {
    model: ReadModel,
    live: String,
    new: String,
}

impl Given {
    async fn models(live_next: i64, new_next: i64) -> Given {
        let url = foldline_testkit::postgres::fresh_database().await;
        let model = ReadModel::connect_lazy(&url, 2).unwrap();
        let (live, new) = ("model_1".to_string(), "model_2".to_string());
        for (schema, next) in [(&live, live_next), (&new, new_next)] {
            model.create_model(schema).await.unwrap();
            sqlx::query(&format!(
                "INSERT INTO {schema}.consumer_offsets VALUES ($1, $2, 0, $3)"
            ))
            .bind(GROUP)
            .bind(TOPIC)
            .bind(next)
            .execute(&model.pool)
            .await
            .unwrap();
        }
        Given { model, live, new }
    }

    /// Product `id` at `price`, its events at `offsets` (version 1, 2, …), in `schema`.
    async fn product(&self, schema: &str, id: &str, price: i64, offsets: &[i64]) {
        let version = offsets.len() as i64;
        sqlx::query(&format!(
            "INSERT INTO {schema}.products VALUES ($1, 'n', $2, 10, 's1', $3,
                                                   '2026-12-03T00:00:00Z', false)"
        ))
        .bind(id)
        .bind(price)
        .bind(version)
        .execute(&self.model.pool)
        .await
        .unwrap();
        for (i, offset) in offsets.iter().enumerate() {
            sqlx::query(&format!(
                "INSERT INTO {schema}.product_events VALUES ($1, $2, 'ProductCreated',
                     '2026-12-03T00:00:00Z', 0, $3, NULL, 'c', '{{}}')"
            ))
            .bind(id)
            .bind(i as i64 + 1)
            .bind(offset)
            .execute(&self.model.pool)
            .await
            .unwrap();
        }
    }

    /// Runs `sql` as written: the test's own change to one of the models.
    async fn run(&self, sql: &str) {
        sqlx::query(sql).execute(&self.model.pool).await.unwrap();
    }

    async fn both(&self, id: &str, price: i64, offsets: &[i64]) {
        self.product(&self.live.clone(), id, price, offsets).await;
        self.product(&self.new.clone(), id, price, offsets).await;
    }

    async fn compare(&self, scope: Scope<'_>) -> Comparison {
        let mut tx = self.model.pool.begin().await.unwrap();
        let conn: &mut PgConnection = &mut tx;
        let comparison = compare(conn, &self.live, &self.new, GROUP, TOPIC, scope)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        comparison
    }
}

fn keys(comparison: &Comparison) -> Vec<String> {
    comparison
        .first
        .iter()
        .map(|d| format!("{} {}", d.table, d.key))
        .collect()
}

#[tokio::test]
async fn the_snapshot_step_cuts_at_the_lower_offset_and_leaves_out_products_past_it_in_either_model(
) {
    // Given: the live model has read to 10, the new one to 12.
    let given = Given::models(10, 12).await;
    given.both("equal", 100, &[1, 3]).await;
    given.product(&given.live, "differs", 101, &[2]).await;
    given.product(&given.new, "differs", 100, &[2]).await;
    // "ahead-in-new" has an event at 11 the live model has not read; its rows differ.
    given.product(&given.live, "ahead-in-new", 100, &[4]).await;
    given
        .product(&given.new, "ahead-in-new", 200, &[4, 11])
        .await;

    // When: step 1 compares.
    let snapshot = given.compare(Scope::Snapshot).await;

    // Then: the differing product is found, the one past the cut is left out for step 2.
    assert_eq!(keys(&snapshot), vec!["products differs"]);
    assert_eq!(snapshot.differences, 1);
    assert_eq!((snapshot.products, snapshot.ahead), (2, 1));
    assert_eq!(
        snapshot.history_events, 4,
        "history before the cut of all three"
    );
    assert_eq!(snapshot.left_out, vec!["ahead-in-new".to_string()]);
    assert!(!snapshot.locked_step);
}

#[tokio::test]
async fn at_the_snapshot_a_live_model_ahead_of_the_new_one_is_cut_at_the_new_ones_offsets() {
    // Given: the live projector went on past where the rebuild's bulk stopped.
    let given = Given::models(12, 10).await;
    given.both("equal", 100, &[1]).await;
    given
        .product(&given.live, "ahead-in-live", 300, &[2, 11])
        .await;
    given.product(&given.new, "ahead-in-live", 100, &[2]).await;
    given
        .product(&given.live, "created-in-live", 100, &[10])
        .await;

    let snapshot = given.compare(Scope::Snapshot).await;

    assert_eq!(snapshot.differences, 0, "{:?}", snapshot.first);
    let mut left_out = snapshot.left_out.clone();
    left_out.sort();
    assert_eq!(left_out, vec!["ahead-in-live", "created-in-live"]);
}

#[tokio::test]
async fn under_the_lock_only_the_products_to_recheck_are_compared_with_every_seller() {
    // Given: equal offsets; one product differs in its row, one in its history.
    let given = Given::models(10, 10).await;
    given.both("equal", 100, &[1]).await;
    given.product(&given.live, "row", 101, &[2]).await;
    given.product(&given.new, "row", 100, &[2]).await;
    given.both("history", 100, &[3, 4]).await;
    given
        .run(&format!(
            "UPDATE {}.product_events SET correlation_id = 'other' WHERE product_id = 'history'",
            given.new
        ))
        .await;
    given
        .run(&format!(
            "INSERT INTO {}.seller_stats VALUES ('s1', 3, 30, 300, 0)",
            given.live
        ))
        .await;

    // When nothing is to recheck: neither product is read, the seller only the live model has
    // is.
    let none = given.compare(Scope::Locked { recheck: &[] }).await;
    assert_eq!(keys(&none), vec!["seller_stats s1"]);
    assert_eq!((none.rechecked, none.rechecked_history_events), (0, 0));

    // When both are: both differences are found (the history's two events).
    let recheck = ["row".to_string(), "history".to_string()];
    let both = given.compare(Scope::Locked { recheck: &recheck }).await;
    assert_eq!(
        keys(&both),
        vec![
            "products row",
            "product_events history v1",
            "product_events history v2",
            "seller_stats s1"
        ]
    );
    assert_eq!((both.rechecked, both.rechecked_history_events), (2, 3));
    assert!(both.event_counts_compared);
}

#[tokio::test]
async fn under_the_lock_a_product_with_events_past_the_live_offsets_is_compared_by_its_history() {
    let given = Given::models(10, 12).await;
    given.product(&given.live, "ahead", 100, &[4]).await;
    given.product(&given.new, "ahead", 200, &[4, 11]).await;

    let recheck = ["ahead".to_string()];
    let locked = given.compare(Scope::Locked { recheck: &recheck }).await;
    assert_eq!(locked.differences, 0, "{:?}", locked.first);
    assert_eq!((locked.ahead, locked.rechecked_history_events), (1, 1));

    // Its history before the cut still counts.
    given
        .run(&format!(
            "DELETE FROM {}.product_events WHERE product_id = 'ahead' AND version = 1",
            given.new
        ))
        .await;
    let locked = given.compare(Scope::Locked { recheck: &recheck }).await;
    assert_eq!(keys(&locked), vec!["product_events ahead v1"]);
}
