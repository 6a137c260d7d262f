//! The result of `foldline-bench sse` (bench/results/sse.json) and its tables in
//! docs/benchmarks.md: each server's ceiling found by stepping the write rate up until it
//! falls behind, over repeated searches, and the latency at half the notifier's ceiling.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::record::{thousands, verdict, Provenance};

/// Issue 40: the notifier's ceiling at least this share of the floor's, at 10,000 clients.
pub const CEILING_RATIO_GOAL: f64 = 0.8;
/// Issue 40: p99 from commit to receipt at half the notifier's own ceiling.
pub const P99_AT_HALF_GOAL_MS: u64 = 250;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Server {
    /// The bare broadcast server (`sse-floor`).
    Floor,
    Notifier,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    /// The write rate asked for, writes/s.
    pub write_rate: u64,
    pub acknowledged: u64,
    /// First receipts of acknowledged events per second, from the first write to the last
    /// receipt (never over less than the step's seconds).
    pub deliveries_per_s: f64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    /// Acknowledged events a client did not have after the grace period.
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub cut_off: u64,
    /// The server's CPU over the step divided by its deliveries.
    pub server_cpu_us_per_delivery: f64,
    pub clients_cpu_us_per_delivery: f64,
    /// Nothing missing, doubled or out of order, and p99 within the bound.
    pub kept_up: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Search {
    pub server: Server,
    pub repeat: usize,
    pub connected: usize,
    /// The server's resident memory with the clients connected, minus before, per client.
    pub rss_per_client_kib: f64,
    pub steps: Vec<Step>,
}

impl Search {
    /// The last step that kept up, when a later one fell behind (else the ceiling lies past
    /// the highest rate tried, and was not found).
    pub fn ceiling(&self) -> Option<&Step> {
        let fell_behind = self.steps.last().is_some_and(|s| !s.kept_up);
        self.steps
            .iter()
            .rev()
            .find(|s| s.kept_up)
            .filter(|_| fell_behind)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        (n > 0).then(|| Spread {
            median: if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            },
            min: v[0],
            max: v[n - 1],
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AtHalf {
    pub server: Server,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SseResult {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub clients: usize,
    pub step_seconds: u64,
    pub p99_bound_ms: u64,
    pub searches: Vec<Search>,
    /// Deliveries/s at each search's ceiling; `None` when a search never fell behind.
    pub floor_ceiling: Option<Spread>,
    pub notifier_ceiling: Option<Spread>,
    /// The medians' ratio, notifier / floor.
    pub ceiling_ratio: Option<f64>,
    /// Half the notifier's median ceiling (writes/s), and both servers run there.
    pub half_rate: u64,
    pub at_half: Vec<AtHalf>,
    pub notifier_p99_at_half_ms: Option<Spread>,
    pub floor_p99_at_half_ms: Option<Spread>,
    /// Over every notifier step (also those past its ceiling: the notifier never drops an
    /// event, a client behind resumes from its cursor).
    pub notifier_missing: u64,
    /// Over every step of either server.
    pub duplicates: u64,
    pub out_of_order: u64,
    pub met: bool,
}

/// The section `sse` of docs/benchmarks.md.
pub fn render(r: &SseResult) -> String {
    let mut out = String::new();
    let per_s = |s: &Option<Spread>| match s {
        Some(s) => format!(
            "{} (runs: {}–{})",
            thousands(s.median),
            thousands(s.min),
            thousands(s.max)
        ),
        None => "not found (a search never fell behind, or fell behind at once)".into(),
    };
    let _ = writeln!(
        out,
        "Measured {} on {} (commit `{}`), by `scripts/bench sse` (bench/results/sse.json): \
         {} clients, {} s of writes per step, a step falls behind when a client misses an \
         acknowledged event, has one twice or out of order, or p99 passes {} ms; searches per \
         server: {}, floor and notifier in turn.\n",
        r.provenance.when(),
        r.provenance.machine,
        r.provenance.commit,
        thousands(r.clients as f64),
        r.step_seconds,
        r.p99_bound_ms,
        r.searches.len() / 2,
    );
    out.push_str("| | the floor (bare broadcast) | the notifier | goal |\n|---|---|---|---|\n");
    let _ = writeln!(
        out,
        "| ceiling, deliveries/s (median, spread) | {} | {} | |",
        per_s(&r.floor_ceiling),
        per_s(&r.notifier_ceiling)
    );
    let _ = writeln!(
        out,
        "| notifier ÷ floor, medians | | {} | ≥ {CEILING_RATIO_GOAL} ({}) |",
        r.ceiling_ratio.map_or("–".into(), |x| format!("{x:.2}×")),
        verdict(r.ceiling_ratio.is_some_and(|x| x >= CEILING_RATIO_GOAL))
    );
    let ms = |s: &Option<Spread>| {
        s.as_ref().map_or("–".into(), |s| {
            format!("{} ms (runs: {}–{} ms)", s.median, s.min, s.max)
        })
    };
    let _ = writeln!(
        out,
        "| p99 at half the notifier's ceiling ({} writes/s) | {} | {} | ≤ {P99_AT_HALF_GOAL_MS} ms ({}) |",
        r.half_rate,
        ms(&r.floor_p99_at_half_ms),
        ms(&r.notifier_p99_at_half_ms),
        verdict(
            r.notifier_p99_at_half_ms
                .as_ref()
                .is_some_and(|p| p.median <= P99_AT_HALF_GOAL_MS as f64)
        )
    );
    let _ = writeln!(
        out,
        "| events missing (notifier: every step, also past its ceiling) / doubled / out of order (both, every step) | | {} / {} / {} | 0 ({}) |\n",
        r.notifier_missing,
        r.duplicates,
        r.out_of_order,
        verdict(r.notifier_missing == 0 && r.duplicates == 0 && r.out_of_order == 0)
    );
    let _ = writeln!(out, "Every step of every search:\n");
    out.push_str("| server | run | writes/s | deliveries/s | p50 ms | p99 ms | missing | cut off | server CPU µs / delivery | clients' CPU µs / delivery | kept up |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    let searches = r
        .searches
        .iter()
        .map(|s| (s.server, format!("{}", s.repeat + 1), &s.steps));
    let at_half = r
        .at_half
        .iter()
        .map(|h| (h.server, "at half".to_owned(), &h.steps));
    for (server, run, steps) in searches.chain(at_half) {
        for s in steps {
            let _ = writeln!(
                out,
                "| {} | {run} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                match server {
                    Server::Floor => "floor",
                    Server::Notifier => "notifier",
                },
                s.write_rate,
                thousands(s.deliveries_per_s),
                s.p50_ms,
                s.p99_ms,
                s.missing,
                s.cut_off,
                s.server_cpu_us_per_delivery,
                s.clients_cpu_us_per_delivery,
                if s.kept_up { "yes" } else { "**no**" }
            );
        }
    }
    let rss = |server: Server| {
        r.searches
            .iter()
            .find(|s| s.server == server)
            .map_or(0.0, |s| s.rss_per_client_kib)
    };
    let _ = writeln!(
        out,
        "\nMemory per connection (the server's RSS with the clients connected minus before, first \
         search): notifier {:.1} KiB, floor {:.1} KiB.",
        rss(Server::Notifier),
        rss(Server::Floor)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rate: u64, per_s: f64, kept_up: bool) -> Step {
        Step {
            write_rate: rate,
            acknowledged: rate * 10,
            deliveries_per_s: per_s,
            p50_ms: 1,
            p99_ms: 2,
            missing: 0,
            duplicates: 0,
            out_of_order: 0,
            cut_off: 0,
            server_cpu_us_per_delivery: 1.0,
            clients_cpu_us_per_delivery: 1.0,
            kept_up,
        }
    }

    fn search(steps: Vec<Step>) -> Search {
        Search {
            server: Server::Notifier,
            repeat: 0,
            connected: 10,
            rss_per_client_kib: 1.0,
            steps,
        }
    }

    #[test]
    fn the_ceiling_is_the_last_step_that_kept_up_before_one_fell_behind() {
        let found = search(vec![
            step(10, 100.0, true),
            step(20, 200.0, true),
            step(40, 250.0, false),
        ]);
        assert_eq!(found.ceiling().map(|s| s.write_rate), Some(20));
        let never_behind = search(vec![step(10, 100.0, true), step(20, 200.0, true)]);
        assert_eq!(
            never_behind.ceiling(),
            None,
            "a ceiling past the rates tried is not found"
        );
        let behind_at_once = search(vec![step(10, 90.0, false)]);
        assert_eq!(behind_at_once.ceiling(), None);
    }

    #[test]
    fn a_spread_is_median_min_and_max() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 4.0]).unwrap().median, 2.5);
        assert_eq!(Spread::of(&[]), None);
    }
}
