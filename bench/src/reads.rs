//! Read latency on a grown read model (issue 27): a product's history and its state as of a
//! position or a time, beside the floor of the same API's plain product read (a primary-key
//! lookup), and the low-stock list (the read the products' stock index was for), measured in
//! one run, one request at a time, the kinds interleaved so the machine's drift touches them
//! alike.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

#[derive(clap::Args)]
pub struct Args {
    /// The query API serving the model.
    #[arg(long)]
    query_url: String,
    /// The model's database (to draw products and events to ask for).
    #[arg(long, env = "FOLDLINE_DATABASE_URL")]
    database_url: String,
    /// Products asked for (drawn at random).
    #[arg(long, default_value_t = 500)]
    samples: i64,
    /// Bearer token, when reads need one.
    #[arg(
        long,
        env = "FOLDLINE_READ_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    token: String,
}

/// A product and its middle event: where `as_of` asks.
#[derive(sqlx::FromRow)]
struct Sample {
    product_id: String,
    events: i64,
    position: String,
    occurred_at: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(&args.database_url).await?;
    let schema: String = sqlx::query_scalar("SELECT schema_name FROM foldline_meta.active_model")
        .fetch_one(&mut db)
        .await?;
    let samples: Vec<Sample> = sqlx::query_as(&format!(
        "WITH chosen AS (SELECT id FROM {schema}.products ORDER BY random() LIMIT $1),
              numbered AS (
                  SELECT e.product_id, e.partition, e.\"offset\", e.occurred_at,
                         row_number() OVER (PARTITION BY e.product_id ORDER BY e.version) AS n,
                         count(*) OVER (PARTITION BY e.product_id) AS events
                  FROM {schema}.product_events e JOIN chosen c ON c.id = e.product_id)
         SELECT product_id, events, partition || ':' || \"offset\" AS position,
                to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
                    AS occurred_at
         FROM numbered WHERE n = events / 2 + 1"
    ))
    .bind(args.samples)
    .fetch_all(&mut db)
    .await?;
    let largest: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM {schema}.product_events
                             GROUP BY product_id) x"
    ))
    .fetch_one(&mut db)
    .await?;
    anyhow::ensure!(!samples.is_empty(), "the model holds no history to ask for");

    let client = crate::with_token(reqwest::Client::builder(), &args.token)?;
    // The last two: the live page's low-stock list (`stock_below` its threshold), and one that
    // few products match (the list's worst case: the scan goes far to fill a page).
    let kinds = [
        "product",
        "history",
        "as_of_position",
        "as_of_time",
        "low_stock",
        "low_stock_rare",
    ];
    let mut latencies: Vec<Histogram<u64>> = kinds
        .iter()
        .map(|_| Histogram::new(3))
        .collect::<Result<_, _>>()?;
    let mut failed = 0u64;
    let url = &args.query_url;
    for sample in &samples {
        let id = &sample.product_id;
        let paths = [
            format!("{url}/products/{id}"),
            format!("{url}/products/{id}/history?limit=100"),
            format!("{url}/products/{id}?as_of={}", sample.position),
            format!(
                "{url}/products/{id}?as_of={}",
                sample.occurred_at.replace(':', "%3A")
            ),
            format!("{url}/products?stock_below=5&limit=20"),
            format!("{url}/products?stock_below=1&limit=20"),
        ];
        for (path, histogram) in paths.iter().zip(latencies.iter_mut()) {
            let started = Instant::now();
            let response = client.get(path).send().await?;
            let status = response.status();
            response.bytes().await?;
            // A deleted product answers 404 now and maybe as of its middle event: still a read.
            if status.is_success() || status == 404 {
                histogram.record(started.elapsed().as_micros() as u64)?;
            } else {
                failed += 1;
            }
        }
    }
    let ms = |h: &Histogram<u64>, q: f64| {
        Duration::from_micros(h.value_at_quantile(q)).as_secs_f64() * 1000.0
    };
    let latency = kinds
        .iter()
        .zip(&latencies)
        .map(|(kind, h)| {
            let figures = crate::probe::Latency {
                p50_ms: ms(h, 0.5),
                p99_ms: ms(h, 0.99),
            };
            ((*kind).to_owned(), figures)
        })
        .collect();
    let mean = samples.iter().map(|s| s.events).sum::<i64>() as f64 / samples.len() as f64;
    crate::probe::print(&crate::probe::Reads {
        samples: samples.len(),
        failed,
        events_per_product_mean: mean,
        largest_product_events: largest,
        latency,
    })
}
