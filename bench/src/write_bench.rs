//! `foldline-bench write` (`scripts/bench write`): the producer under keep-alive HTTP load
//! (wrk), single commands and batches, beside the floors of the same work measured in the same
//! run: a bare rdkafka producer with the producer's durability settings (alone and in
//! transactions of the sizes group commit forms), and a bare axum handler parsing the same
//! JSON (at full speed, and held to the producer's own cycle). Then the single-command rate
//! against the number of connections, and producers sharing the partitions. Writes one typed
//! result; `foldline-bench docs` makes its table.
//!
//! Runs against the servers of `start_core_stack` (addresses from the environment) and the
//! binaries in `--bins`; `--pids` holds the broker's pid file.

use std::path::PathBuf;
use std::time::Duration;

use foldline_testkit::process::{free_port, Spawned};

use crate::probe::{self, Produced};
use crate::record::Provenance;
use crate::write_result::{Shared, WriteResult};
use crate::wrk::{Load, WrkRun};

#[derive(clap::Args)]
pub struct Args {
    /// Folder of the release binaries.
    #[arg(long)]
    bins: PathBuf,
    /// The pid files of the stack (`broker.pid`).
    #[arg(long)]
    pids: PathBuf,
    /// The repository (for `scripts/lib/wrk/post.lua`).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Seconds per HTTP run.
    #[arg(long, default_value_t = 15)]
    duration: u64,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Commands per `POST /commands`.
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// Where to write the result (JSON).
    #[arg(long)]
    out: PathBuf,
}

const CURVE: [usize; 4] = [16, 64, 256, 1024];

pub async fn run(args: Args) -> anyhow::Result<()> {
    let provenance = Provenance::now();
    let broker = crate::cpu::read_pid(&args.pids.join("broker.pid"))?;
    let token = foldline_testkit::auth::token("bench-write", "admin", None, 3600);
    let scratch = tempfile_dir()?;
    let create = serde_json::json!({
        "name": "Bench lamp", "price_cents": 2599, "stock": 12, "seller_id": "seller-bench"
    });
    let single_body = scratch.join("single.json");
    std::fs::write(&single_body, create.to_string())?;
    let mut command = create.clone();
    command["op"] = "create".into();
    let batch_body = scratch.join("batch.json");
    let commands = vec![command; args.batch];
    std::fs::write(
        &batch_body,
        serde_json::json!({ "commands": commands }).to_string(),
    )?;
    let load = |url: String, body: &PathBuf, connections: usize| Load {
        repo: &args.repo,
        url,
        body: body.clone(),
        connections,
        seconds: args.duration,
        token: &token,
    };

    eprintln!("(a) a raw rdkafka producer, alone and in transactions");
    let topic = foldline_testkit::unique("bench-raw");
    let c = args.connections;
    let raw_produce = |records: usize, transaction: usize, producers: usize| {
        let topic = topic.clone();
        async move {
            let (records, transaction, producers) = (
                records.to_string(),
                transaction.to_string(),
                producers.to_string(),
            );
            probe::run::<Produced>(
                &[
                    "raw-produce",
                    "--topic",
                    &topic,
                    "--value-bytes",
                    "200",
                    "--records",
                    &records,
                    "--transaction-records",
                    &transaction,
                    "--transactional-producers",
                    &producers,
                ],
                &[],
            )
            .await
        }
    };
    let raw = raw_produce(200_000, 0, 1).await?;
    let raw_txn_single = raw_produce(c * 100, c, 1).await?;
    let raw_txn_batch = raw_produce(c * args.batch * 30, c * args.batch, 1).await?;
    let raw_txn_parallel = raw_produce(c * 300, c, 3).await?;

    eprintln!("(b) a bare axum handler");
    let (bare, bare_cpu) = bare_handler(0, |url| load(url, &single_body, c)).await?;

    eprintln!("(c) the producer");
    let producer = Spawned::start(
        &bin(&args, "foldline-producer"),
        "FOLDLINE_PRODUCER_LISTEN",
        &[
            ("FOLDLINE_TOPIC", foldline_testkit::unique("bench-products")),
            (
                "FOLDLINE_TRANSACTIONAL_ID",
                foldline_testkit::unique("bench-producer"),
            ),
        ],
    )
    .await;
    let producer_pid = producer.pid().unwrap_or(0);
    let single_load = load(format!("{}/products", producer.url), &single_body, c);
    let ((single, broker_cpu), producer_cpu) = crate::cpu::during(producer_pid, async {
        crate::cpu::during(broker, crate::wrk::run(&single_load)).await
    })
    .await?;
    let batched =
        crate::wrk::run(&load(format!("{}/commands", producer.url), &batch_body, c)).await?;
    let mut curve = Vec::new();
    for connections in CURVE {
        let run = load(
            format!("{}/products", producer.url),
            &single_body,
            connections,
        );
        curve.push(crate::wrk::run(&run).await?);
    }
    drop(producer);

    // The bare handler again, each request held until the next tick of a shared cycle as long
    // as the producer's mean wait at the same connections: the floor at the producer's own
    // rate and shape, where each wake-up is shared by fewer requests than at full speed.
    eprintln!("(b') the bare handler held to the producer's cycle");
    let cycle_us = (c as f64 / single.rate.max(1.0) * 1e6) as u64;
    let (held, held_cpu) = bare_handler(cycle_us, |url| load(url, &single_body, c)).await?;

    eprintln!("(d) producers sharing the partitions");
    let mut shared = Vec::new();
    for instances in 1..=3 {
        shared.extend(share(&args, instances, broker, &single_body, &batch_body, &token).await?);
    }
    let per_request = |cpu_us: u64, run: &WrkRun| cpu_us as f64 / (run.rate * run.seconds).max(1.0);
    let result = WriteResult {
        provenance,
        connections: c,
        seconds: args.duration,
        batch: args.batch,
        producer_cpu_us_per_command: per_request(producer_cpu, &single),
        broker_cpu_us_per_command: per_request(broker_cpu, &single),
        bare_cpu_us_per_request: per_request(bare_cpu, &bare),
        held_cpu_us_per_request: per_request(held_cpu, &held),
        cycle_us,
        raw,
        raw_txn_single,
        raw_txn_batch,
        raw_txn_parallel,
        bare,
        single,
        batched,
        curve,
        held,
        shared,
    };
    std::fs::remove_dir_all(&scratch)?;
    crate::record::write(&args.out, &result)
}

/// `foldline-bench bare-http` (held to `cycle_us` when not 0) under `load`; its run and CPU.
async fn bare_handler<'a>(
    cycle_us: u64,
    load: impl Fn(String) -> Load<'a>,
) -> anyhow::Result<(WrkRun, u64)> {
    let port = free_port();
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    let (listen, cycle) = (format!("127.0.0.1:{port}"), cycle_us.to_string());
    let bare = Spawned::spawn(
        &exe,
        &["bare-http", "--listen", &listen, "--cycle-us", &cycle],
        &[],
        port,
    );
    wait_port(port).await?;
    let pid = bare.pid().unwrap_or(0);
    crate::cpu::during(
        pid,
        crate::wrk::run(&load(format!("http://{listen}/products"))),
    )
    .await
}

/// `instances` producers in partitions mode sharing one topic's partitions, each loaded by its
/// own wrk with a share of the connections: single commands, then batches.
async fn share(
    args: &Args,
    instances: usize,
    broker: u32,
    single_body: &PathBuf,
    batch_body: &PathBuf,
    token: &str,
) -> anyhow::Result<Vec<Shared>> {
    let (topic, fleet) = (
        foldline_testkit::unique("bench-shared"),
        foldline_testkit::unique("bench-fleet"),
    );
    let mut producers = Vec::new();
    for _ in 0..instances {
        producers.push(
            Spawned::start(
                &bin(args, "foldline-producer"),
                "FOLDLINE_PRODUCER_LISTEN",
                &[
                    ("FOLDLINE_TOPIC", topic.clone()),
                    ("FOLDLINE_TRANSACTIONAL_ID", fleet.clone()),
                    ("FOLDLINE_PRODUCER_OWNERSHIP", "partitions".into()),
                ],
            )
            .await,
        );
    }
    wait_partitions_served(&producers, 3.0).await?;
    let mut out = Vec::new();
    for (path, body, commands) in [
        ("/products", single_body, 1),
        ("/commands", batch_body, args.batch),
    ] {
        let loads: Vec<Load> = producers
            .iter()
            .map(|p| Load {
                repo: &args.repo,
                url: format!("{}{path}", p.url),
                body: body.clone(),
                connections: args.connections / instances,
                seconds: args.duration,
                token,
            })
            .collect();
        let pids: Vec<u32> = producers.iter().filter_map(Spawned::pid).collect();
        let before: Vec<u64> = pids.iter().map(|p| crate::cpu::cpu_us(*p)).collect();
        let (runs, broker_cpu) = crate::cpu::during(broker, async {
            let runs = futures::future::join_all(loads.iter().map(crate::wrk::run)).await;
            runs.into_iter().collect::<anyhow::Result<Vec<_>>>()
        })
        .await?;
        let producers_cpu: u64 = pids
            .iter()
            .zip(&before)
            .map(|(p, b)| crate::cpu::cpu_us(*p).saturating_sub(*b))
            .sum();
        let seconds = args.duration as f64;
        out.push(Shared {
            instances,
            commands_per_request: commands,
            commands_per_s: runs.iter().map(|r| r.rate).sum::<f64>() * commands as f64,
            worst_p99_ms: runs.iter().map(|r| r.p99_ms).fold(0.0, f64::max),
            non_2xx: runs.iter().map(|r| r.non_2xx).sum(),
            broker_cpu_share: broker_cpu as f64 / 1e6 / seconds,
            producers_cpu_share: producers_cpu as f64 / 1e6 / seconds,
        });
    }
    Ok(out)
}

/// Until the producers serve `want` partitions in all (`producer_partitions_served`).
async fn wait_partitions_served(producers: &[Spawned], want: f64) -> anyhow::Result<()> {
    for _ in 0..300 {
        let mut served = 0.0;
        for producer in producers {
            served += producer.metric("producer_partitions_served").await;
        }
        if served == want {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("the producers did not share the {want} partitions in 60 s")
}

async fn wait_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("nothing listens on {port} after 10 s")
}

fn bin(args: &Args, name: &str) -> String {
    args.bins.join(name).to_string_lossy().into_owned()
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(foldline_testkit::unique("foldline-bench-write"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
