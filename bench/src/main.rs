//! Baselines that `scripts/bench` runs beside Foldline, so every figure it prints comes with
//! the limit of the part underneath it:
//! - `raw-produce`: a bare rdkafka producer with the producer's durability settings
//!   (acks=all, idempotence) sending records of the same size: the broker's limit.
//! - `bare-http`: an axum server that parses the same JSON bodies as the producer and answers
//!   without producing: the HTTP stack's limit under the same load generator.
//! - `raw-put`, `raw-batch-write`: the S3 and DynamoDB limits for the sinks' own bytes/items.

mod bare_http;
mod cpu;
mod docs;
mod fill;
mod hostile;
mod idle;
mod log_bench;
mod probe;
mod profile_bench;
mod project;
mod project_bench;
mod project_result;
mod raw_produce;
mod reads;
mod record;
mod restart;
mod sinks;
mod sinks_bench;
mod sinks_result;
mod soak;
mod soak_bench;
mod sse;
mod sse_check;
mod sse_floor;
mod sse_listen;
mod sse_result;
mod stages;
mod upgrade_drill;
mod write_bench;
mod write_result;
mod wrk;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "foldline-bench", about = "Baselines for scripts/bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send records straight to the broker and print one JSON line of rate and latency.
    RawProduce(raw_produce::Args),
    /// Serve POST /products and POST /commands that only parse the body and answer.
    BareHttp(bare_http::Args),
    /// Pre-fill a topic with valid, registry-encoded product events.
    Fill(fill::Args),
    /// The read model on a grown topic: projector, rebuild, verify, reads and write → visible,
    /// each beside its floor (`scripts/bench project`).
    Project(project_bench::Args),
    /// Read a topic to its end without decoding.
    RawConsume(project::ConsumeArgs),
    /// COPY rows shaped like the read model's products (or history) into Postgres.
    RawCopy(project::CopyArgs),
    /// Read and decode every archive file, as a rebuild reads them.
    RawArchiveRead(project::ArchiveReadArgs),
    /// Wait until the projection's stored offsets reach the topic's end; print the rate.
    WatchProjection(project::WatchArgs),
    /// Write at a fixed rate; time from each 2xx until the query API shows it.
    WriteToVisible(project::VisibleArgs),
    /// Time from a record's timestamp until a bare read_committed consumer receives it.
    TailLatency(project::TailArgs),
    /// SSE fan-out to its ceiling, the notifier beside the bare broadcast floor: write rates
    /// rise step by step until each falls behind (`scripts/bench sse`).
    Sse(sse::Args),
    /// The clients of an SSE run, as a process of their own.
    SseListen(sse_listen::Args),
    /// A bare broadcast server with the notifier's frames: the fan-out floor.
    SseFloor(sse_floor::Args),
    /// The archiver and the recent-events consumer beside bare PUT and BatchWriteItem loops
    /// (`scripts/bench sinks`).
    Sinks(sinks_bench::Args),
    /// The broker alone: commits and the tail, fresh and on a grown log (`scripts/bench log`).
    Log(log_bench::Args),
    /// The producer under HTTP load beside a raw producer and a bare handler
    /// (`scripts/bench write`).
    Write(write_bench::Args),
    /// Every service on a grown log, minute by minute (`scripts/bench soak`).
    Soak(soak_bench::Args),
    /// perf profiles of the producer and the projector under load, flame graphs and the
    /// functions with the most samples (`scripts/bench profile`).
    Profile(profile_bench::Args),
    /// PUT the archive's files again in a bare loop.
    RawPut(sinks::PutArgs),
    /// Write the recent-events items of a topic with a bare BatchWriteItem loop.
    RawBatchWrite(sinks::BatchWriteArgs),
    /// Time a consumer by one of its counters, from its first move to a target.
    WatchMetric(sinks::WatchArgs),
    /// Write at a fixed rate for minutes; print write -> visible (query, SSE) and lag per minute.
    SoakLoad(soak::Args),
    /// Time history and as-of reads beside plain product reads on the query API.
    ReadLatency(reads::Args),
    /// Hold connections, open SSE streams, send refused commands; print what is held and RSS.
    Hostile(hostile::Args),
    /// Producer start → ready on a grown log after SIGKILLs, beside a raw consume of the log.
    Restart(restart::Args),
    /// CPU of the `scripts/up` stack with no writes, per process and in all; then write →
    /// visible at a trickle on it.
    Idle(idle::Args),
    /// A schema change shipped under load: the previous release's binaries replaced by the
    /// current ones one process at a time, then checked (`scripts/upgrade-drill`).
    UpgradeDrill(upgrade_drill::Args),
    /// Print a TCP port nothing listens on now, chosen by the OS (the scripts' `free_port`).
    FreePort,
    /// Rewrite the generated tables of docs/benchmarks.md from bench/results/ (`--check`:
    /// fail when they differ).
    Docs(docs::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    foldline_service::telemetry::init("warn");
    match Cli::parse().command {
        Command::RawProduce(args) => raw_produce::run(args).await,
        Command::BareHttp(args) => bare_http::run(args).await,
        Command::Fill(args) => fill::run(args).await,
        Command::Project(args) => project_bench::run(args).await,
        Command::RawConsume(args) => project::raw_consume(args).await,
        Command::RawCopy(args) => project::raw_copy(args).await,
        Command::RawArchiveRead(args) => project::raw_archive_read(args).await,
        Command::WatchProjection(args) => project::watch_projection(args).await,
        Command::WriteToVisible(args) => project::write_to_visible(args).await,
        Command::TailLatency(args) => project::tail_latency(args).await,
        Command::Sse(args) => sse::run(args).await,
        Command::SseListen(args) => sse_listen::run(args).await,
        Command::SseFloor(args) => sse_floor::run(args).await,
        Command::Hostile(args) => hostile::run(args).await,
        Command::Idle(args) => idle::run(args).await,
        Command::Restart(args) => restart::run(args).await,
        Command::UpgradeDrill(args) => upgrade_drill::run(args).await,
        Command::Docs(args) => docs::run(args).await,
        Command::FreePort => {
            println!("{}", foldline_testkit::process::free_port());
            Ok(())
        }
        Command::Sinks(args) => sinks_bench::run(args).await,
        Command::Log(args) => log_bench::run(args).await,
        Command::Write(args) => write_bench::run(args).await,
        Command::Soak(args) => soak_bench::run(args).await,
        Command::Profile(args) => profile_bench::run(args).await,
        Command::RawPut(args) => sinks::raw_put(args).await,
        Command::RawBatchWrite(args) => sinks::raw_batch_write(args).await,
        Command::WatchMetric(args) => sinks::watch_metric(args).await,
        Command::SoakLoad(args) => soak::run(args).await,
        Command::ReadLatency(args) => reads::run(args).await,
    }
}

/// An HTTP client that sends `token` as the bearer token with every request (writes need one).
pub fn with_token(builder: reqwest::ClientBuilder, token: &str) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    Ok(builder.default_headers(headers).build()?)
}

/// This process's CPU time (user + system) so far, in microseconds: the floors print theirs
/// over their measured interval, beside the CPU per event of the Foldline process they match.
pub fn own_cpu_us() -> u64 {
    cpu::cpu_us(std::process::id())
}
