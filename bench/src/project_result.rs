//! The result of `foldline-bench project` (bench/results/project.json) and its table in
//! docs/benchmarks.md: the projector, the rebuild and `foldline verify` on a grown topic, each
//! beside the floor of the same work measured in the same run.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::probe::{Consumed, Copied, Filled, Projected, Reads, Tail, Visible};
use crate::record::{thousands, verdict, Provenance};

/// Issue 39's targets on this machine (1M events, 50,000 products).
pub const REBUILD_GOAL_S: f64 = 10.0;
pub const SWAP_LOCK_GOAL_S: f64 = 0.5;
pub const VERIFY_GOAL_S: f64 = 10.0;
/// The projector's PostgreSQL CPU per event, at most this many times a raw COPY row's.
pub const POSTGRES_CPU_VS_COPY_GOAL: f64 = 2.0;
/// The projector's events/s, at least this share of a raw consume's records/s.
pub const PROJECTOR_VS_CONSUME_GOAL: f64 = 0.8;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectResult {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub products: usize,
    pub fill: Filled,
    /// The floors: the topic read to its end, bare and with every record decoded.
    pub raw_consume: Consumed,
    pub raw_decode: Consumed,
    pub raw_decode_broker_cpu_us_per_record: f64,
    /// The floor of the model's writes: as many rows COPYed into a products-shaped table.
    pub raw_copy: Copied,
    pub raw_copy_postgres_cpu_us_per_row: f64,
    /// The live projector catching up on the whole topic.
    pub projector: Projected,
    pub projector_cpu_us_per_event: CpuPerEvent,
    /// The projector's statements, by PostgreSQL execution time (pg_stat_statements).
    pub statements: Vec<Statement>,
    pub rebuild: Rebuilt,
    pub verify: Verified,
    pub reads: Reads,
    pub visible: Visible,
    /// Beside write → visible: a bare read_committed consumer at the tail.
    pub tail: Tail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CpuPerEvent {
    pub projector: f64,
    /// The PostgreSQL server and its backends.
    pub postgres: f64,
    pub broker: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Statement {
    pub calls: i64,
    pub rows: i64,
    /// Execution time per event projected, µs.
    pub us_per_event: f64,
    pub query: String,
}

/// `foldline-projector replay --json`, with the write rate kept up meanwhile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rebuilt {
    pub events: u64,
    pub seconds: f64,
    pub events_per_s: f64,
    pub swap_lock_seconds: f64,
    pub compare_snapshot_seconds: f64,
    pub compare_locked_seconds: f64,
    pub differences: i64,
    #[serde(default)]
    pub writes_per_s_during: u64,
}

/// `foldline verify --json --only postgres`, and its peak memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verified {
    pub events: u64,
    pub seconds: f64,
    pub differences: usize,
    #[serde(default)]
    pub peak_rss_kib: u64,
}

impl ProjectResult {
    fn events(&self) -> f64 {
        self.fill.events as f64
    }

    pub fn projector_vs_consume(&self) -> f64 {
        self.projector.rate / self.raw_consume.rate.max(1e-9)
    }

    pub fn postgres_cpu_vs_copy(&self) -> f64 {
        self.projector_cpu_us_per_event.postgres / self.raw_copy_postgres_cpu_us_per_row.max(1e-9)
    }

    /// Every issue-39 target this bench measures.
    pub fn met(&self) -> bool {
        self.rebuild.seconds <= REBUILD_GOAL_S
            && self.rebuild.swap_lock_seconds <= SWAP_LOCK_GOAL_S
            && self.verify.seconds <= VERIFY_GOAL_S
            && self.verify.differences == 0
            && self.rebuild.differences == 0
            && self.postgres_cpu_vs_copy() <= POSTGRES_CPU_VS_COPY_GOAL
            && self.projector_vs_consume() >= PROJECTOR_VS_CONSUME_GOAL
    }
}

/// The section `project` of docs/benchmarks.md.
pub fn render(r: &ProjectResult) -> String {
    let mut out = String::new();
    let n = r.events();
    let _ = writeln!(
        out,
        "Measured {} on {} (commit `{}`), by `scripts/bench project --events {}` \
         (bench/results/project.json): {} events over {} products pre-filled at {} events/s.\n",
        r.provenance.when(),
        r.provenance.machine,
        r.provenance.commit,
        r.fill.events,
        thousands(n),
        thousands(r.products as f64),
        thousands(r.fill.rate),
    );
    out.push_str(
        "| figure | measured | the floor, same run | ratio | goal |\n|---|---:|---:|---:|---|\n",
    );
    let _ = writeln!(
        out,
        "| projector, events/s | {} | raw consume {} records/s | {:.2}× | ≥ {PROJECTOR_VS_CONSUME_GOAL}× ({}) |",
        thousands(r.projector.rate),
        thousands(r.raw_consume.rate),
        r.projector_vs_consume(),
        verdict(r.projector_vs_consume() >= PROJECTOR_VS_CONSUME_GOAL)
    );
    let _ = writeln!(
        out,
        "| projector's PostgreSQL CPU, µs per event | {:.1} | raw COPY {:.1} per row | {:.1}× | ≤ {POSTGRES_CPU_VS_COPY_GOAL}× ({}) |",
        r.projector_cpu_us_per_event.postgres,
        r.raw_copy_postgres_cpu_us_per_row,
        r.postgres_cpu_vs_copy(),
        verdict(r.postgres_cpu_vs_copy() <= POSTGRES_CPU_VS_COPY_GOAL)
    );
    let _ = writeln!(
        out,
        "| projector process CPU, µs per event | {:.1} | raw consume + decode {:.1} per record | {:.1}× | |",
        r.projector_cpu_us_per_event.projector,
        r.raw_decode.cpu_us_per_record,
        r.projector_cpu_us_per_event.projector / r.raw_decode.cpu_us_per_record.max(1e-9)
    );
    let _ = writeln!(
        out,
        "| broker CPU while projecting, µs per event | {:.1} | raw consume + decode {:.1} per record | | |",
        r.projector_cpu_us_per_event.broker, r.raw_decode_broker_cpu_us_per_record
    );
    let consume_s = n / r.raw_consume.rate.max(1e-9);
    let _ = writeln!(
        out,
        "| rebuild (`replay`), s, comparison included ({} writes/s meanwhile) | {:.1} ({} events/s) | raw consume {:.1} s | {:.1}× | ≤ {REBUILD_GOAL_S} s ({}) |",
        r.rebuild.writes_per_s_during,
        r.rebuild.seconds,
        thousands(r.rebuild.events_per_s),
        consume_s,
        r.rebuild.seconds / consume_s.max(1e-9),
        verdict(r.rebuild.seconds <= REBUILD_GOAL_S)
    );
    let _ = writeln!(
        out,
        "| its comparison: at a snapshot / under the swap lock, s | {:.1} / {:.2} | | | |",
        r.rebuild.compare_snapshot_seconds, r.rebuild.compare_locked_seconds
    );
    let _ = writeln!(
        out,
        "| swap lock held (the live projector's pause), s | {:.2} | | | ≤ {SWAP_LOCK_GOAL_S} s ({}) |",
        r.rebuild.swap_lock_seconds,
        verdict(r.rebuild.swap_lock_seconds <= SWAP_LOCK_GOAL_S)
    );
    let _ = writeln!(
        out,
        "| `foldline verify`, s ({} differences, peak memory {} MiB) | {:.1} ({} events/s) | raw consume {:.1} s | {:.1}× | ≤ {VERIFY_GOAL_S} s ({}) |",
        r.verify.differences,
        r.verify.peak_rss_kib / 1024,
        r.verify.seconds,
        thousands(r.verify.events as f64 / r.verify.seconds.max(1e-9)),
        consume_s,
        r.verify.seconds / consume_s.max(1e-9),
        verdict(r.verify.seconds <= VERIFY_GOAL_S && r.verify.differences == 0)
    );
    let _ = writeln!(
        out,
        "| write → visible at {} writes/s, p50 / p99 ms ({} writes, {} failed) | {:.1} / {:.1} | bare consumer at the tail {} / {} | | |",
        r.visible.rate,
        r.visible.writes,
        r.visible.failed.values().sum::<u64>(),
        r.visible.p50_ms,
        r.visible.p99_ms,
        r.tail.p50_ms,
        r.tail.p99_ms
    );
    let product = r.reads.latency.get("product");
    for (kind, label) in [
        ("history", "`GET /products/{id}/history?limit=100`"),
        ("as_of_position", "`GET /products/{id}?as_of=P:O`"),
        ("as_of_time", "`GET /products/{id}?as_of=<time>`"),
    ] {
        if let (Some(l), Some(p)) = (r.reads.latency.get(kind), product) {
            let _ = writeln!(
                out,
                "| {label}, p50 / p99 ms | {:.2} / {:.2} | a product read {:.2} / {:.2} | {:.1}× at p99 | |",
                l.p50_ms,
                l.p99_ms,
                p.p50_ms,
                p.p99_ms,
                l.p99_ms / p.p99_ms.max(1e-9)
            );
        }
    }
    let _ = writeln!(
        out,
        "\nThe projector's PostgreSQL execution time per event, by statement (pg_stat_statements):\n"
    );
    out.push_str("| µs per event | calls | rows | statement |\n|---:|---:|---:|---|\n");
    for s in &r.statements {
        let _ = writeln!(
            out,
            "| {:.1} | {} | {} | `{}` |",
            s.us_per_event,
            thousands(s.calls as f64),
            thousands(s.rows as f64),
            s.query.replace('|', "\\|")
        );
    }
    let _ = writeln!(out, "\nEvery issue-39 target above: {}.", verdict(r.met()));
    out
}
