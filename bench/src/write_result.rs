//! The result of `foldline-bench write` (bench/results/write.json) and its tables in
//! docs/benchmarks.md.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::probe::Produced;
use crate::record::{thousands, verdict, Provenance};
use crate::wrk::WrkRun;

/// Issue 2's goals: single commands at least this share of min(raw producer, bare handler)…
pub const SINGLE_GOAL: f64 = 0.5;
/// … batched commands of the raw producer's records/s…
pub const BATCH_GOAL: f64 = 0.5;
/// … and (issue 29) the producer's CPU per command at most this many times the bare
/// handler's per request at full speed.
pub const CPU_GOAL: f64 = 3.0;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shared {
    pub instances: usize,
    pub commands_per_request: usize,
    pub commands_per_s: f64,
    /// The worst instance's p99.
    pub worst_p99_ms: f64,
    pub non_2xx: u64,
    /// Cores used over the run.
    pub broker_cpu_share: f64,
    pub producers_cpu_share: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteResult {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub connections: usize,
    pub seconds: u64,
    pub batch: usize,
    /// The floors: a bare rdkafka producer, alone and in transactions of the sizes group
    /// commit forms (one per connection; `batch` per connection; three producers at once).
    pub raw: Produced,
    pub raw_txn_single: Produced,
    pub raw_txn_batch: Produced,
    pub raw_txn_parallel: Produced,
    /// The floor of the HTTP stack: a bare axum handler parsing the same JSON.
    pub bare: WrkRun,
    pub bare_cpu_us_per_request: f64,
    pub single: WrkRun,
    pub producer_cpu_us_per_command: f64,
    pub broker_cpu_us_per_command: f64,
    pub batched: WrkRun,
    /// Single commands against the number of connections.
    pub curve: Vec<WrkRun>,
    /// A diagnostic floor: the bare handler held to a cycle as long as the producer's mean
    /// wait (connections ÷ its rate).
    pub cycle_us: u64,
    pub held: WrkRun,
    pub held_cpu_us_per_request: f64,
    pub shared: Vec<Shared>,
}

impl WriteResult {
    pub fn single_ratio(&self) -> f64 {
        self.single.rate / self.raw.rate.min(self.bare.rate).max(1e-9)
    }

    pub fn batch_ratio(&self) -> f64 {
        self.batched.rate * self.batch as f64 / self.raw.rate.max(1e-9)
    }

    pub fn cpu_ratio(&self) -> f64 {
        self.producer_cpu_us_per_command / self.bare_cpu_us_per_request.max(1e-9)
    }
}

fn ms(run: &WrkRun) -> String {
    format!("{:.2} / {:.2}", run.p50_ms, run.p99_ms)
}

/// The section `write` of docs/benchmarks.md.
pub fn render(r: &WriteResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Measured {} on {} (commit `{}`), by `scripts/bench write --duration {} --connections {}` \
         (bench/results/write.json): wrk with {} keep-alive connections, {} s per HTTP run, \
         200-byte records.\n",
        r.provenance.when(),
        r.provenance.machine,
        r.provenance.commit,
        r.seconds,
        r.connections,
        r.connections,
        r.seconds,
    );
    out.push_str("| what | per second | p50 / p99 ms | non-2xx |\n|---|---:|---:|---:|\n");
    let produced = |p: &Produced, what: &str| {
        format!(
            "| {what} | {} records | {:.2} / {:.2} | |\n",
            thousands(p.rate),
            p.p50_ms,
            p.p99_ms
        )
    };
    out.push_str(&produced(
        &r.raw,
        "(a) raw rdkafka producer, acks=all, idempotent",
    ));
    let size = |p: &Produced| p.records as u64 / p.transactions.max(1);
    out.push_str(&produced(
        &r.raw_txn_single,
        &format!(
            "… in transactions of {} records (per transaction)",
            size(&r.raw_txn_single)
        ),
    ));
    out.push_str(&produced(
        &r.raw_txn_batch,
        &format!(
            "… in transactions of {} records (per transaction)",
            size(&r.raw_txn_batch)
        ),
    ));
    out.push_str(&produced(
        &r.raw_txn_parallel,
        &format!(
            "… three producers at once, {} records each (per transaction)",
            size(&r.raw_txn_parallel)
        ),
    ));
    let _ = writeln!(
        out,
        "| (b) bare axum handler, same JSON | {} requests | {} | {} |",
        thousands(r.bare.rate),
        ms(&r.bare),
        r.bare.non_2xx
    );
    let _ = writeln!(
        out,
        "| (c) producer, single `POST /products` | {} commands | {} | {} |",
        thousands(r.single.rate),
        ms(&r.single),
        r.single.non_2xx
    );
    let _ = writeln!(
        out,
        "| (c) producer, `POST /commands` ×{} | {} commands ({} requests) | {} | {} |",
        r.batch,
        thousands(r.batched.rate * r.batch as f64),
        thousands(r.batched.rate),
        ms(&r.batched),
        r.batched.non_2xx
    );
    out.push_str("\n| against its floor, same run | ratio | goal |\n|---|---:|---|\n");
    let _ = writeln!(
        out,
        "| single commands ÷ min(raw producer, bare handler) | {:.2} | ≥ {SINGLE_GOAL} ({}) |",
        r.single_ratio(),
        verdict(r.single_ratio() >= SINGLE_GOAL)
    );
    let _ = writeln!(
        out,
        "| batched commands ÷ raw producer | {:.2} | ≥ {BATCH_GOAL} ({}) |",
        r.batch_ratio(),
        verdict(r.batch_ratio() >= BATCH_GOAL)
    );
    let _ = writeln!(
        out,
        "| the producer's CPU per command ({:.0} µs; the broker's {:.0} µs) ÷ the bare handler's per request at full speed ({:.0} µs) | {:.1}× | ≤ {CPU_GOAL}× ({}) |",
        r.producer_cpu_us_per_command,
        r.broker_cpu_us_per_command,
        r.bare_cpu_us_per_request,
        r.cpu_ratio(),
        verdict(r.cpu_ratio() <= CPU_GOAL)
    );
    let _ = writeln!(
        out,
        "| diagnostic: ÷ the bare handler held to the producer's {:.1} ms cycle ({:.0} µs per request, {} requests/s) | {:.1}× | |",
        r.cycle_us as f64 / 1000.0,
        r.held_cpu_us_per_request,
        thousands(r.held.rate),
        r.producer_cpu_us_per_command / r.held_cpu_us_per_request.max(1e-9)
    );
    out.push_str("\nSingle commands against the number of connections:\n\n| connections | commands/s | p50 / p99 ms | non-2xx | socket errors |\n|---:|---:|---:|---:|---:|\n");
    for run in &r.curve {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            run.connections,
            thousands(run.rate),
            ms(run),
            run.non_2xx,
            run.socket_errors
        );
    }
    out.push_str("\nProducers sharing the partitions (partitions mode, 3 partitions, the connections split between them):\n\n| instances | request | commands/s | worst p99 ms | non-2xx | broker CPU | producers' CPU |\n|---:|---|---:|---:|---:|---:|---:|\n");
    for s in &r.shared {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2} | {} | {:.0} % | {:.0} % |",
            s.instances,
            if s.commands_per_request == 1 {
                "`POST /products`".to_owned()
            } else {
                format!("`POST /commands` ×{}", s.commands_per_request)
            },
            thousands(s.commands_per_s),
            s.worst_p99_ms,
            s.non_2xx,
            s.broker_cpu_share * 100.0,
            s.producers_cpu_share * 100.0
        );
    }
    out
}
