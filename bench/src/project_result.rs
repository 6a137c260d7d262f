//! The result of `foldline-bench project` (bench/results/project.json) and its table in
//! docs/benchmarks.md: the projector, the rebuild and `foldline verify` on a grown topic, each
//! beside the floor of the same work measured in the same run.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::probe::{ArchiveRead, Consumed, Copied, Filled, Projected, Reads, Tail, Visible};
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
    /// The floor of a bulk load's history: as many rows COPYed into a history-shaped table
    /// without keys (absent in results before 2026-12-07's bulk load).
    #[serde(default)]
    pub raw_copy_history: Option<Copied>,
    #[serde(default)]
    pub raw_copy_history_postgres_cpu_us_per_row: Option<f64>,
    /// The floor of the live projector's history insert: as many history rows COPYed into a
    /// table with the model's primary key.
    #[serde(default)]
    pub raw_copy_history_keyed: Option<Copied>,
    #[serde(default)]
    pub raw_copy_history_keyed_postgres_cpu_us_per_row: Option<f64>,
    /// The floor of reading the archive: every file fetched and decoded, nothing done.
    #[serde(default)]
    pub raw_archive: Option<ArchiveRead>,
    /// The live projector catching up on the whole topic.
    pub projector: Projected,
    pub projector_cpu_us_per_event: CpuPerEvent,
    /// The projector's statements, by PostgreSQL execution time (pg_stat_statements).
    pub statements: Vec<Statement>,
    /// The rebuild reading the topic, then reading the archive and the topic's tail.
    pub rebuild: Rebuilt,
    #[serde(default)]
    pub rebuild_archive: Option<Rebuilt>,
    pub verify: Verified,
    #[serde(default)]
    pub verify_archive: Option<Verified>,
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
    /// Where the bulk load's time went (absent: written batch by batch).
    #[serde(default)]
    pub bulk: Option<BulkTimings>,
    /// Why the bulk load gave way to batches, when it did.
    #[serde(default)]
    pub fell_back: Option<String>,
    #[serde(default)]
    pub from_archive: bool,
    /// CPU of the rebuild's process and of PostgreSQL, µs per event.
    #[serde(default)]
    pub cpu_us_per_event: Option<f64>,
    #[serde(default)]
    pub postgres_cpu_us_per_event: Option<f64>,
}

/// `replay --json`'s `bulk`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct BulkTimings {
    pub read_seconds: f64,
    pub rows_seconds: f64,
    pub index_seconds: f64,
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

    /// Product rows the projector wrote per event (a batch folds a product's events into one
    /// row), from pg_stat_statements.
    pub fn product_rows_per_event(&self) -> f64 {
        let rows = self.sum_over(&["UPDATE products", "INSERT INTO products"], |s| {
            s.rows as f64
        });
        rows / self.events().max(1.0)
    }

    /// `value` summed over the statements whose text starts with one of `starts`.
    fn sum_over(&self, starts: &[&str], value: fn(&Statement) -> f64) -> f64 {
        self.statements
            .iter()
            .filter(|s| starts.iter().any(|start| s.query.starts_with(start)))
            .map(value)
            .sum()
    }

    /// The floor of the projector's PostgreSQL work, measured in the same run: the rows it
    /// writes, COPYed — a history row per event into the keyed table, and its product rows —
    /// in µs of PostgreSQL CPU per event.
    pub fn rows_floor_us_per_event(&self) -> Option<f64> {
        self.raw_copy_history_keyed_postgres_cpu_us_per_row
            .map(|keyed| {
                keyed + self.product_rows_per_event() * self.raw_copy_postgres_cpu_us_per_row
            })
    }

    /// The rebuild the targets are judged on: from the archive when the run made one.
    pub fn headline_rebuild(&self) -> &Rebuilt {
        self.rebuild_archive.as_ref().unwrap_or(&self.rebuild)
    }

    pub fn headline_verify(&self) -> &Verified {
        self.verify_archive.as_ref().unwrap_or(&self.verify)
    }

    /// Every issue-39 target this bench measures.
    pub fn met(&self) -> bool {
        let (rebuild, verify) = (self.headline_rebuild(), self.headline_verify());
        rebuild.seconds <= REBUILD_GOAL_S
            && rebuild.swap_lock_seconds <= SWAP_LOCK_GOAL_S
            && verify.seconds <= VERIFY_GOAL_S
            && verify.differences == 0
            && rebuild.differences == 0
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
    if let Some(floor) = r.rows_floor_us_per_event() {
        let copy = r.raw_copy_postgres_cpu_us_per_row.max(1e-9);
        let _ = writeln!(
            out,
            "| … the floor of that work: the rows it writes, COPYed (a history row per event into the keyed table, {:.2} product rows per event), µs per event | {:.1} | raw COPY {:.1} per row | {:.1}× | |",
            r.product_rows_per_event(),
            floor,
            r.raw_copy_postgres_cpu_us_per_row,
            floor / copy
        );
        let absorbs = 1e6 / floor.max(1e-9);
        let _ = writeln!(
            out,
            "| … what one PostgreSQL backend (a projector writes one batch at a time) doing only that floor's work absorbs, events/s | {} | raw consume {} records/s | {:.2}× | |",
            thousands(absorbs),
            thousands(r.raw_consume.rate),
            absorbs / r.raw_consume.rate.max(1e-9)
        );
        if let Some(cores) = r.provenance.cores() {
            // Reading and writing at their floors, every process of the run sharing the cores.
            let sum =
                r.raw_decode.cpu_us_per_record + r.raw_decode_broker_cpu_us_per_record + floor;
            let absorbs = f64::from(cores) * 1e6 / sum.max(1e-9);
            let _ = writeln!(
                out,
                "| … what the machine's {cores} cores absorb with every part at its floor (consume + decode, the consumer's CPU and the broker's, and the rows COPYed: {sum:.1} µs per event), events/s | {} | raw consume {} records/s | {:.2}× | |",
                thousands(absorbs),
                thousands(r.raw_consume.rate),
                absorbs / r.raw_consume.rate.max(1e-9)
            );
        }
    }
    // New rows by COPY, redelivered ones by INSERT … ON CONFLICT (older runs: all by INSERT).
    let history_us = r.sum_over(
        &["INSERT INTO product_events", "COPY product_events"],
        |s| s.us_per_event,
    );
    if let Some(keyed) = r.raw_copy_history_keyed_postgres_cpu_us_per_row {
        let _ = writeln!(
            out,
            "| … of which its history rows (execution time), µs per event | {:.1} | COPY into the keyed history table {:.1} per row (PostgreSQL CPU) | {:.1}× | |",
            history_us,
            keyed,
            history_us / keyed.max(1e-9)
        );
    }
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
    for rebuild in [Some(&r.rebuild), r.rebuild_archive.as_ref()]
        .into_iter()
        .flatten()
    {
        rebuild_rows(&mut out, rebuild, consume_s);
    }
    let _ = writeln!(
        out,
        "| swap lock held (the live projector's pause), s | {:.2} | | | ≤ {SWAP_LOCK_GOAL_S} s ({}) |",
        r.headline_rebuild().swap_lock_seconds,
        verdict(r.headline_rebuild().swap_lock_seconds <= SWAP_LOCK_GOAL_S)
    );
    if let (Some(archive), Some(copy), Some(copy_pg)) = (
        &r.raw_archive,
        &r.raw_copy_history,
        r.raw_copy_history_postgres_cpu_us_per_row,
    ) {
        let _ = writeln!(
            out,
            "| floors of a rebuild's parts, same run: archive read + decode ({} files) / COPY of as many history rows without keys, s | {:.1} / {:.1} | | | |",
            archive.files, archive.seconds, copy.seconds
        );
        let _ = writeln!(
            out,
            "| … their CPU: archive read + decode µs per record / PostgreSQL's per COPY row | {:.1} / {:.1} | | | |",
            archive.cpu_us_per_record, copy_pg
        );
    }
    for (verify, how, floor) in [
        (Some(&r.verify), "the topic", ("raw consume", consume_s)),
        (
            r.verify_archive.as_ref(),
            "the archive, then the topic (`--from-archive`)",
            (
                "archive read + decode",
                r.raw_archive.as_ref().map_or(0.0, |a| a.seconds),
            ),
        ),
    ] {
        let Some(verify) = verify else { continue };
        let _ = writeln!(
            out,
            "| `foldline verify` reading {how}, s ({} differences, peak memory {} MiB) | {:.1} ({} events/s) | {} {:.1} s | {:.1}× | ≤ {VERIFY_GOAL_S} s ({}) |",
            verify.differences,
            verify.peak_rss_kib / 1024,
            verify.seconds,
            thousands(verify.events as f64 / verify.seconds.max(1e-9)),
            floor.0,
            floor.1,
            verify.seconds / floor.1.max(1e-9),
            verdict(verify.seconds <= VERIFY_GOAL_S && verify.differences == 0)
        );
    }
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
        (
            "low_stock",
            "`GET /products?stock_below=5&limit=20` (the live page's list)",
        ),
        (
            "low_stock_rare",
            "`GET /products?stock_below=1&limit=20` (few match)",
        ),
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

/// The rows of one rebuild: its time beside the raw consume's, how it loaded, its CPU.
fn rebuild_rows(out: &mut String, rebuild: &Rebuilt, consume_s: f64) {
    let read = match rebuild.from_archive {
        true => "the archive, then the topic (`--from-archive`)",
        false => "the topic",
    };
    let _ = writeln!(
        out,
        "| rebuild (`replay`) reading {read}, s, comparison included ({} writes/s meanwhile) | {:.1} ({} events/s) | raw consume {:.1} s | {:.1}× | ≤ {REBUILD_GOAL_S} s ({}) |",
        rebuild.writes_per_s_during,
        rebuild.seconds,
        thousands(rebuild.events_per_s),
        consume_s,
        rebuild.seconds / consume_s.max(1e-9),
        verdict(rebuild.seconds <= REBUILD_GOAL_S && rebuild.differences == 0)
    );
    let how = match (&rebuild.bulk, &rebuild.fell_back) {
        (Some(b), _) => format!(
            "bulk load: read + fold + history COPY {:.1}, other rows {:.1}, keys and indexes {:.1}",
            b.read_seconds, b.rows_seconds, b.index_seconds
        ),
        (None, Some(why)) => format!("batch by batch ({})", why.replace('|', "\\|")),
        (None, None) => "batch by batch".into(),
    };
    let _ = writeln!(
        out,
        "| … its parts, s: {how}; comparison at a snapshot / under the swap lock | {:.1} / {:.2} | | | |",
        rebuild.compare_snapshot_seconds, rebuild.compare_locked_seconds
    );
    if let (Some(own), Some(pg)) = (rebuild.cpu_us_per_event, rebuild.postgres_cpu_us_per_event) {
        let _ = writeln!(
            out,
            "| … its CPU, µs per event: the rebuild's process / PostgreSQL | {own:.1} / {pg:.1} | | | |"
        );
    }
}

/// The before/after of issue 39: `before` (the result of record it started from) beside `r`.
pub fn render_before_after(before: &ProjectResult, r: &ProjectResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Before and after the bulk load, the archive reader and the HOT updates (issue 39) — \
         before: {} on {} (commit `{}`); after: {} on {} (commit `{}`); each beside the raw \
         consume of its own run, which tells how fast that machine was:\n",
        before.provenance.when(),
        before.provenance.machine,
        before.provenance.commit,
        r.provenance.when(),
        r.provenance.machine,
        r.provenance.commit
    );
    out.push_str(
        "| figure | before | after | raw consume, before / after |\n|---|---:|---:|---:|\n",
    );
    let rows: [(&str, f64, f64); 7] = [
        (
            "rebuild reading the topic, s (comparison included)",
            before.rebuild.seconds,
            r.rebuild.seconds,
        ),
        (
            "rebuild, the issue's path (after: `--from-archive`), s",
            before.headline_rebuild().seconds,
            r.headline_rebuild().seconds,
        ),
        (
            "its comparison at a snapshot, s",
            before.headline_rebuild().compare_snapshot_seconds,
            r.headline_rebuild().compare_snapshot_seconds,
        ),
        (
            "`foldline verify` reading the topic, s",
            before.verify.seconds,
            r.verify.seconds,
        ),
        (
            "`foldline verify`, the issue's path (after: `--from-archive`), s",
            before.headline_verify().seconds,
            r.headline_verify().seconds,
        ),
        (
            "projector, events/s",
            before.projector.rate,
            r.projector.rate,
        ),
        (
            "projector's PostgreSQL CPU, µs per event",
            before.projector_cpu_us_per_event.postgres,
            r.projector_cpu_us_per_event.postgres,
        ),
    ];
    let figure = |v: f64| match v >= 1000.0 {
        true => thousands(v),
        false => format!("{v:.1}"),
    };
    for (name, was, is) in rows {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} / {} records/s |",
            figure(was),
            figure(is),
            thousands(before.raw_consume.rate),
            thousands(r.raw_consume.rate)
        );
    }
    out
}
