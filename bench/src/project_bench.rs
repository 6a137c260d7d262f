//! `foldline-bench project` (`scripts/bench project`): the read model on a grown topic — the
//! live projector catching up on it, a rebuild (`foldline-projector replay`), reads of history
//! on the rebuilt model, `foldline verify`, and write → visible on a fresh topic — each beside
//! the floor of the same work measured in the same run: a raw consume (bare and decoding), a
//! raw COPY of as many rows, a bare consumer at the tail. Writes one typed result;
//! `foldline-bench docs` makes its table.
//!
//! Runs against the broker and registry of `start_core_stack` (addresses from the
//! environment), a PostgreSQL started with pg_stat_statements (`--admin-url`), and the
//! binaries in `--bins`; `--pids` holds the pid files of the broker and PostgreSQL.

use std::path::PathBuf;
use std::time::Duration;

use foldline_testkit::process::Spawned;
use sqlx::{Connection, PgConnection};

use crate::probe::{self, ArchiveRead, Consumed, Copied, Filled, Projected, Reads, Tail, Visible};
use crate::project_result::{CpuPerEvent, ProjectResult, Rebuilt, Statement, Verified};
use crate::record::Provenance;

#[derive(clap::Args)]
pub struct Args {
    /// Folder of the release binaries.
    #[arg(long)]
    bins: PathBuf,
    /// PostgreSQL as its owner, without a database: `postgres://foldline@127.0.0.1:PORT`.
    #[arg(long)]
    admin_url: String,
    /// The pid files of the stack (`broker.pid`, `postgres.pid`).
    #[arg(long)]
    pids: PathBuf,
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    #[arg(long, default_value_t = 50_000)]
    products: usize,
    /// Writes per second for write → visible: half the producer's peak for single commands.
    #[arg(long, default_value_t = 150)]
    visible_rate: u64,
    /// Events per second written to the topic while the rebuild runs (0: none).
    #[arg(long, default_value_t = 0)]
    replay_write_rate: u64,
    /// Where to write the result (JSON).
    #[arg(long)]
    out: PathBuf,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // The checkout as the run starts: what was built (it may change while the run goes on).
    let provenance = Provenance::now();
    let pid = |name: &str| crate::cpu::read_pid(&args.pids.join(format!("{name}.pid")));
    let (broker, postgres) = (pid("broker")?, pid("postgres")?);
    let model_url = format!("{}/bench_model", args.admin_url);
    let visible_url = format!("{}/bench_visible", args.admin_url);
    let mut admin = PgConnection::connect(&format!("{}/foldline", args.admin_url)).await?;
    for sql in [
        "DROP DATABASE IF EXISTS bench_model",
        "DROP DATABASE IF EXISTS bench_visible",
        "CREATE DATABASE bench_model",
        "CREATE DATABASE bench_visible",
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
    ] {
        sqlx::query(sql).execute(&mut admin).await?;
    }
    let topic = foldline_testkit::unique("bench-project");
    let (events, products) = (args.events.to_string(), args.products.to_string());
    eprintln!("pre-filling {topic} with {events} events");
    let fill: Filled = probe::run(
        &[
            "fill",
            "--topic",
            &topic,
            "--events",
            &events,
            "--products",
            &products,
        ],
        &[],
    )
    .await?;
    eprintln!("the floors: raw consume, raw consume + decode, raw COPY");
    let raw_consume: Consumed = probe::run(&["raw-consume", "--topic", &topic], &[]).await?;
    let registry = std::env::var("FOLDLINE_REGISTRY_URL")?;
    let (raw_decode, broker_us): (Consumed, u64) = crate::cpu::during(broker, async {
        probe::run(
            &["raw-consume", "--topic", &topic, "--decode-with", &registry],
            &[],
        )
        .await
    })
    .await?;
    let raw_copy = |shape: &'static str| {
        let (model_url, events) = (model_url.clone(), events.clone());
        crate::cpu::during(postgres, async move {
            let args = ["raw-copy", "--database-url", &model_url, "--rows", &events];
            probe::run::<Copied>(&[&args[..], &["--shape", shape]].concat(), &[]).await
        })
    };
    let (raw_copy_products, copy_pg_us) = raw_copy("products").await?;
    let (raw_copy_history, copy_history_pg_us) = raw_copy("history").await?;
    let (raw_copy_history_keyed, copy_keyed_pg_us) = raw_copy("history-keyed").await?;
    eprintln!("the archive of the topic (the archiver), and the floor of reading it");
    let bucket = foldline_testkit::unique("bench-project-archive");
    archive(&args, &topic, &bucket, fill.events as u64).await?;
    let raw_archive: ArchiveRead = probe::run(
        &["raw-archive-read"],
        &[("FOLDLINE_ARCHIVE_BUCKET", bucket.as_str())],
    )
    .await?;

    eprintln!("the projector on the whole topic");
    let (projector, projector_cpu, statements) = project(
        &args,
        &topic,
        &model_url,
        fill.end,
        (broker, postgres),
        &mut admin,
    )
    .await?;
    eprintln!("the rebuild from the topic");
    let rebuild_topic = rebuild(&args, &topic, &model_url, None, postgres).await?;
    eprintln!("the rebuild from the archive, then the topic");
    let rebuild_archive = rebuild(&args, &topic, &model_url, Some(&bucket), postgres).await?;
    eprintln!("history reads on the rebuilt model");
    let reads = reads(&args, &topic, &model_url).await?;
    eprintln!("foldline verify");
    let verify_topic = verify(&args, &topic, &model_url, None).await?;
    eprintln!("foldline verify --from-archive");
    let verify_archive = verify(&args, &topic, &model_url, Some(&bucket)).await?;
    eprintln!("write → visible at {} writes/s", args.visible_rate);
    let (visible, tail) = write_to_visible(&args, &visible_url).await?;
    let n = fill.events.max(1) as f64;
    let result = ProjectResult {
        provenance,
        products: args.products,
        raw_decode_broker_cpu_us_per_record: broker_us as f64 / raw_decode.records.max(1) as f64,
        raw_copy_postgres_cpu_us_per_row: copy_pg_us as f64 / raw_copy_products.rows.max(1) as f64,
        raw_copy_history_postgres_cpu_us_per_row: Some(
            copy_history_pg_us as f64 / raw_copy_history.rows.max(1) as f64,
        ),
        raw_copy_history: Some(raw_copy_history),
        raw_copy_history_keyed_postgres_cpu_us_per_row: Some(
            copy_keyed_pg_us as f64 / raw_copy_history_keyed.rows.max(1) as f64,
        ),
        raw_copy_history_keyed: Some(raw_copy_history_keyed),
        raw_archive: Some(raw_archive),
        rebuild_archive: Some(rebuild_archive),
        verify_archive: Some(verify_archive),
        projector_cpu_us_per_event: CpuPerEvent {
            projector: projector_cpu[0] as f64 / n,
            postgres: projector_cpu[1] as f64 / n,
            broker: projector_cpu[2] as f64 / n,
        },
        statements: statements
            .into_iter()
            .map(|(calls, ms, rows, query)| Statement {
                calls,
                rows,
                us_per_event: ms * 1000.0 / n,
                query,
            })
            .collect(),
        fill,
        raw_consume,
        raw_decode,
        raw_copy: raw_copy_products,
        projector,
        rebuild: rebuild_topic,
        verify: verify_topic,
        reads,
        visible,
        tail,
    };
    crate::record::write(&args.out, &result)
}

type Statements = Vec<(i64, f64, i64, String)>;

/// The live projector from offset 0 to the topic's end; CPU of it, PostgreSQL and the broker
/// over that time, and its statements' execution time.
async fn project(
    args: &Args,
    topic: &str,
    model_url: &str,
    end: i64,
    (broker, postgres): (u32, u32),
    admin: &mut PgConnection,
) -> anyhow::Result<(Projected, [u64; 3], Statements)> {
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(&mut *admin)
        .await?;
    let port = foldline_testkit::process::free_port();
    let mut projector = Spawned::spawn(
        &bin(args, "foldline-projector"),
        &[],
        &[
            ("FOLDLINE_TOPIC", topic.to_owned()),
            ("FOLDLINE_DATABASE_URL", model_url.to_owned()),
            ("FOLDLINE_PROJECTOR_LISTEN", format!("127.0.0.1:{port}")),
        ],
        port,
    );
    let projector_pid = projector.pid().unwrap_or(0);
    let before = [
        crate::cpu::cpu_us(projector_pid),
        crate::cpu::tree_now(postgres),
        crate::cpu::cpu_us(broker),
    ];
    let end = end.to_string();
    let projected: Projected = probe::run(
        &["watch-projection", "--topic", topic, "--end", &end],
        &[("FOLDLINE_DATABASE_URL", model_url)],
    )
    .await?;
    let cpu = [
        crate::cpu::cpu_us(projector_pid).saturating_sub(before[0]),
        crate::cpu::tree_now(postgres).saturating_sub(before[1]),
        crate::cpu::cpu_us(broker).saturating_sub(before[2]),
    ];
    let statements: Statements = sqlx::query_as(
        "SELECT calls, total_exec_time, rows,
                left(regexp_replace(regexp_replace(query, '\\s+', ' ', 'g'), '[a-z_0-9]+\\.', '', 'g'), 72)
         FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'bench_model')
           -- the watcher's own polls (watch-projection), not the projector's
           AND query NOT LIKE '%sum(next_offset)%'
           AND query NOT LIKE 'SELECT schema_name FROM foldline_meta.active_model%'
         ORDER BY total_exec_time DESC LIMIT 9",
    )
    .fetch_all(&mut *admin)
    .await?;
    anyhow::ensure!(projector.terminate(), "the projector did not stop cleanly");
    Ok((projected, cpu, statements))
}

/// The topic into `bucket` by the archiver, until it has archived all `events`.
async fn archive(args: &Args, topic: &str, bucket: &str, events: u64) -> anyhow::Result<()> {
    let mut archiver = Spawned::start(
        &bin(args, "foldline-archiver"),
        "FOLDLINE_ARCHIVER_LISTEN",
        &[
            ("FOLDLINE_TOPIC", topic.to_owned()),
            ("FOLDLINE_ARCHIVE_BUCKET", bucket.to_owned()),
            ("FOLDLINE_ARCHIVER_GROUP", format!("{topic}-archiver")),
            ("FOLDLINE_ARCHIVE_FILE_SECONDS", "5".into()),
        ],
    )
    .await;
    let url = format!("{}/metrics", archiver.url);
    let target = events.to_string();
    let _: probe::Watched = probe::run(
        &[
            "watch-metric",
            "--url",
            &url,
            "--metric",
            "archive_records_total",
            "--target",
            &target,
        ],
        &[],
    )
    .await?;
    anyhow::ensure!(archiver.terminate(), "the archiver did not stop cleanly");
    Ok(())
}

/// `foldline-projector replay --json` (from the archive in `bucket`, when given), with
/// `--replay-write-rate` events/s written meanwhile; its CPU and PostgreSQL's.
async fn rebuild(
    args: &Args,
    topic: &str,
    model_url: &str,
    bucket: Option<&str>,
    postgres: u32,
) -> anyhow::Result<Rebuilt> {
    let during = (args.replay_write_rate > 0).then(|| {
        let (rate, events) = (
            args.replay_write_rate.to_string(),
            (args.replay_write_rate * 900).to_string(),
        );
        // Writes for longer than any rebuild here takes; stopped when it ends.
        tokio::process::Command::new(std::env::current_exe().expect("own path"))
            .args([
                "fill",
                "--topic",
                topic,
                "--id-prefix",
                "during-",
                "--products",
                "2000",
            ])
            .args(["--rate", &rate, "--events", &events])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
    });
    let during = during.transpose()?;
    let postgres_before = crate::cpu::tree_now(postgres);
    let rebuilt = replay_from(&bin(args, "foldline-projector"), topic, model_url, bucket).await;
    let postgres_us = crate::cpu::tree_settled(postgres)
        .await
        .saturating_sub(postgres_before);
    drop(during);
    let mut rebuilt = rebuilt?;
    rebuilt.writes_per_s_during = args.replay_write_rate;
    rebuilt.postgres_cpu_us_per_event = Some(postgres_us as f64 / rebuilt.events.max(1) as f64);
    Ok(rebuilt)
}

/// `foldline-projector replay --json` of `topic` into the model at `database_url`.
pub async fn replay(projector: &str, topic: &str, database_url: &str) -> anyhow::Result<Rebuilt> {
    replay_from(projector, topic, database_url, None).await
}

/// The same, reading the archive in `bucket` first when given; with its own CPU per event.
async fn replay_from(
    projector: &str,
    topic: &str,
    database_url: &str,
    bucket: Option<&str>,
) -> anyhow::Result<Rebuilt> {
    let mut command = tokio::process::Command::new(projector);
    command
        .args(["replay", "--json", "--drop-grace-ms", "100"])
        .env("FOLDLINE_TOPIC", topic)
        .env("FOLDLINE_DATABASE_URL", database_url)
        .env("FOLDLINE_PROJECTOR_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped());
    if let Some(bucket) = bucket {
        command
            .arg("--from-archive")
            .env("FOLDLINE_ARCHIVE_BUCKET", bucket);
    }
    let (out, cpu_us) = with_child_cpu(command).await?;
    anyhow::ensure!(out.0.success(), "replay failed: {}", out.0);
    let mut rebuilt: Rebuilt = serde_json::from_slice(&out.1)?;
    rebuilt.cpu_us_per_event = Some(cpu_us as f64 / rebuilt.events.max(1) as f64);
    Ok(rebuilt)
}

/// Runs `command` to its end; its exit status, standard output and CPU time (µs, user and
/// system, read from /proc while it runs: the last reading before it exits).
async fn with_child_cpu(
    mut command: tokio::process::Command,
) -> anyhow::Result<((std::process::ExitStatus, Vec<u8>), u64)> {
    let mut child = command.spawn()?;
    let pid = child.id().unwrap_or(0);
    let mut stdout = child.stdout.take().expect("piped");
    let reading = async {
        let mut out = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let mut cpu = 0;
    let watching = async {
        loop {
            cpu = cpu.max(crate::cpu::cpu_us(pid));
            tokio::select! {
                status = child.wait() => break status,
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    };
    let (out, status) = tokio::join!(reading, watching);
    Ok(((status?, out?), cpu))
}

async fn reads(args: &Args, topic: &str, model_url: &str) -> anyhow::Result<Reads> {
    let query = Spawned::start(
        &bin(args, "foldline-query"),
        "FOLDLINE_QUERY_LISTEN",
        &[
            ("FOLDLINE_TOPIC", topic.to_owned()),
            ("FOLDLINE_DATABASE_URL", model_url.to_owned()),
        ],
    )
    .await;
    probe::run(
        &["read-latency", "--query-url", &query.url],
        &[("FOLDLINE_DATABASE_URL", model_url)],
    )
    .await
}

/// `foldline verify --json --only postgres` (reading the archive in `bucket` first, when
/// given), its peak resident memory sampled as it runs.
async fn verify(
    args: &Args,
    topic: &str,
    model_url: &str,
    bucket: Option<&str>,
) -> anyhow::Result<Verified> {
    let mut command = tokio::process::Command::new(bin(args, "foldline"));
    command
        .args(["verify", "--json", "--only", "postgres"])
        .env("FOLDLINE_TOPIC", topic)
        .env("FOLDLINE_DATABASE_URL", model_url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped());
    if let Some(bucket) = bucket {
        command
            .arg("--from-archive")
            .env("FOLDLINE_ARCHIVE_BUCKET", bucket);
    }
    let mut child = command.spawn()?;
    let pid = child.id().unwrap_or(0);
    let mut peak = 0;
    let status = loop {
        peak = peak.max(crate::cpu::status_kib(pid, "VmHWM:"));
        tokio::select! {
            status = child.wait() => break status?,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    };
    let mut stdout = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        tokio::io::AsyncReadExt::read_to_end(&mut out, &mut stdout).await?;
    }
    anyhow::ensure!(
        status.success(),
        "verify failed: {status}: {}",
        String::from_utf8_lossy(&stdout)
    );
    let mut verified: Verified = serde_json::from_slice(&stdout)?;
    verified.peak_rss_kib = peak;
    Ok(verified)
}

/// Writes at `--visible-rate` through a producer on a fresh topic, each timed until the query
/// API shows it, beside a bare read_committed consumer at the same topic's tail.
async fn write_to_visible(args: &Args, visible_url: &str) -> anyhow::Result<(Visible, Tail)> {
    let topic = foldline_testkit::unique("visible");
    let producer = Spawned::start(
        &bin(args, "foldline-producer"),
        "FOLDLINE_PRODUCER_LISTEN",
        &[
            ("FOLDLINE_TOPIC", topic.clone()),
            (
                "FOLDLINE_TRANSACTIONAL_ID",
                foldline_testkit::unique("bench-visible"),
            ),
        ],
    )
    .await;
    let model = [
        ("FOLDLINE_TOPIC", topic.clone()),
        ("FOLDLINE_DATABASE_URL", visible_url.to_owned()),
    ];
    // Ready once it has joined its group: it sees the first write.
    let projector = Spawned::start(
        &bin(args, "foldline-projector"),
        "FOLDLINE_PROJECTOR_LISTEN",
        &model,
    )
    .await;
    let query = Spawned::start(
        &bin(args, "foldline-query"),
        "FOLDLINE_QUERY_LISTEN",
        &model,
    )
    .await;
    let token = foldline_testkit::auth::token("bench-project", "admin", None, 3600);
    let rate = args.visible_rate.to_string();
    let write_args = [
        "write-to-visible",
        "--rate",
        &rate,
        "--seconds",
        "20",
        "--producer-url",
        &producer.url,
        "--query-url",
        &query.url,
    ];
    let write_env = [("FOLDLINE_TOKEN", token.as_str())];
    let tail_args = ["tail-latency", "--topic", &topic, "--seconds", "22"];
    let (visible, tail) = tokio::join!(
        probe::run::<Visible>(&write_args, &write_env),
        probe::run::<Tail>(&tail_args, &[]),
    );
    drop((projector, query, producer));
    Ok((visible?, tail?))
}

fn bin(args: &Args, name: &str) -> String {
    args.bins.join(name).to_string_lossy().into_owned()
}
