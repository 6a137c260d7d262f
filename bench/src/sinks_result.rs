//! The result of `foldline-bench sinks` (bench/results/sinks.json) and its table in
//! docs/benchmarks.md.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::probe::{BatchWritten, Consumed, Put, Watched};
use crate::record::{thousands, verdict, Provenance};

/// Issue 12's goals: the archiver at least this share of a bare PUT loop of the same files…
pub const ARCHIVER_VS_PUT_GOAL: f64 = 0.8;
/// … and the recent-events consumer of a bare BatchWriteItem loop of the same items.
pub const RECENT_VS_BATCH_GOAL: f64 = 0.7;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cpu {
    /// The sink's own process.
    pub process_us: u64,
    /// The server it writes to (S3 or DynamoDB API), over the same time.
    pub server_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SinksResult {
    #[serde(flatten)]
    pub provenance: Provenance,
    /// The archiver over the archive topic, by `archive_records_total`.
    pub archived: Watched,
    pub archive_bytes: u64,
    pub archiver_cpu: Cpu,
    /// The floor of its writes: the same files PUT in a bare loop.
    pub put: Put,
    pub put_s3_cpu_us: u64,
    /// The floor of its reads: a raw consume decoding every record of the same topic.
    pub consume: Consumed,
    /// The recent-events consumer over its topic, by `consumer_events_total`.
    pub recent: Watched,
    pub recent_cpu: Cpu,
    /// The floor of its writes: the same items in a bare BatchWriteItem loop.
    pub batch: BatchWritten,
    pub batch_dynamodb_cpu_us: u64,
}

/// The section `sinks` of docs/benchmarks.md.
pub fn render(r: &SinksResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Measured {} on {} (commit `{}`), by `scripts/bench sinks --archive-events {} \
         --dynamodb-events {}` (bench/results/sinks.json).\n",
        r.provenance.when(),
        r.provenance.machine,
        r.provenance.commit,
        r.archived.value,
        r.recent.value,
    );
    out.push_str(
        "| sink | events/s | the floor, same run | ratio | goal |\n|---|---:|---:|---:|---|\n",
    );
    let vs_put = r.archived.rate / r.put.rate.max(1e-9);
    let _ = writeln!(
        out,
        "| archiver (read, decode, Avro + deflate, upload: {} files, {:.1} MiB) | {} | bare PUT of the same files: {} events/s ({:.0} MiB/s) | {:.2}× | ≥ {ARCHIVER_VS_PUT_GOAL}× ({}) |",
        r.put.files,
        r.archive_bytes as f64 / 1_048_576.0,
        thousands(r.archived.rate),
        thousands(r.put.rate),
        r.put.mib_per_s,
        vs_put,
        verdict(vs_put >= ARCHIVER_VS_PUT_GOAL)
    );
    let _ = writeln!(
        out,
        "| archiver, beside its read floor | {} | raw consume + decode of the same topic: {} records/s | {:.2}× | |",
        thousands(r.archived.rate),
        thousands(r.consume.rate),
        r.archived.rate / r.consume.rate.max(1e-9)
    );
    let vs_batch = r.recent.rate / r.batch.rate.max(1e-9);
    let _ = writeln!(
        out,
        "| recent-events consumer | {} | bare BatchWriteItem of the same items: {} events/s | {:.2}× | ≥ {RECENT_VS_BATCH_GOAL}× ({}) |",
        thousands(r.recent.rate),
        thousands(r.batch.rate),
        vs_batch,
        verdict(vs_batch >= RECENT_VS_BATCH_GOAL)
    );
    let per = |us: u64, n: f64| us as f64 / n.max(1.0);
    let (archived, recent) = (r.archived.value, r.recent.value);
    let items_per_event = r.batch.items as f64 / r.batch.events.max(1) as f64;
    out.push_str("\n| CPU per event, µs | the sink's process | its server | the floor's client | the floor's server |\n|---|---:|---:|---:|---:|\n");
    let _ = writeln!(
        out,
        "| archiver (floor: raw consume + decode, then bare PUT) | {:.1} | {:.1} (S3) | {:.1} + {:.1} | {:.1} |",
        per(r.archiver_cpu.process_us, archived),
        per(r.archiver_cpu.server_us, archived),
        r.consume.cpu_us_per_record,
        per(r.put.cpu_us, r.put.records as f64),
        per(r.put_s3_cpu_us, r.put.records as f64),
    );
    let _ = writeln!(
        out,
        "| recent-events (floor: raw consume + decode, then bare BatchWriteItem; {:.1} items per event) | {:.1} | {:.1} (DynamoDB) | {:.1} + {:.1} | {:.1} |",
        items_per_event,
        per(r.recent_cpu.process_us, recent),
        per(r.recent_cpu.server_us, recent),
        r.consume.cpu_us_per_record,
        per(r.batch.cpu_us, r.batch.events as f64),
        per(r.batch_dynamodb_cpu_us, r.batch.events as f64),
    );
    out
}
