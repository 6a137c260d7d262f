//! `foldline-bench profile` (`scripts/bench profile`): perf samples the producer and the
//! projector while writes go in at `--rate` and the query API shows each; inferno folds the
//! stacks and draws the flame graphs (docs/profiles/*.svg). The result holds each process's
//! CPU per event over the sampled interval and the functions that take the most samples, by
//! their own time and by what runs under them. Writes one typed result; `foldline-bench docs`
//! makes its table.
//!
//! Runs against the servers `scripts/bench` started (broker, registry, S3, PostgreSQL:
//! addresses from the environment), the binaries in `--bins`, `perf` and inferno's binaries
//! in `--inferno`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use foldline_testkit::process::Spawned;
use serde::{Deserialize, Serialize};

use crate::probe::{self, Visible};
use crate::record::Provenance;

#[derive(clap::Args)]
pub struct Args {
    /// Folder of the release binaries.
    #[arg(long)]
    bins: PathBuf,
    /// Folder of `inferno-collapse-perf` and `inferno-flamegraph`.
    #[arg(long)]
    inferno: PathBuf,
    /// The repository (the flame graphs go to its docs/profiles/).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Single commands per second.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Seconds sampled (the load runs 10 s longer around them).
    #[arg(long, alias = "sse-seconds", default_value_t = 20)]
    seconds: u64,
    /// Where to write the result (JSON).
    #[arg(long)]
    out: PathBuf,
}

/// A function and its share of the process's sampled CPU time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Share {
    pub percent: f64,
    pub function: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessProfile {
    pub name: String,
    pub cpu_us_per_event: f64,
    /// perf's sampled weight in all (the shares below are of it).
    pub weight: u64,
    /// Most samples in the function itself.
    pub own: Vec<Share>,
    /// Most samples in or under Foldline's own functions.
    pub under: Vec<Share>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileResult {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub rate: u64,
    pub seconds: u64,
    pub visible: Visible,
    pub processes: Vec<ProcessProfile>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let provenance = Provenance::now();
    let topic = foldline_testkit::unique("profile");
    let bin = |name: &str| args.bins.join(name).to_string_lossy().into_owned();
    let on_topic = [("FOLDLINE_TOPIC", topic.clone())];
    let producer = Spawned::start(
        &bin("foldline-producer"),
        "FOLDLINE_PRODUCER_LISTEN",
        &[
            ("FOLDLINE_TOPIC", topic.clone()),
            (
                "FOLDLINE_TRANSACTIONAL_ID",
                foldline_testkit::unique("profile"),
            ),
        ],
    )
    .await;
    let projector = Spawned::start(
        &bin("foldline-projector"),
        "FOLDLINE_PROJECTOR_LISTEN",
        &on_topic,
    )
    .await;
    let query = Spawned::start(&bin("foldline-query"), "FOLDLINE_QUERY_LISTEN", &on_topic).await;
    let token = foldline_testkit::auth::token("bench-profile", "admin", None, 3600);
    let (rate, load_seconds) = (args.rate.to_string(), (args.seconds + 10).to_string());
    let load_args = [
        "write-to-visible",
        "--rate",
        &rate,
        "--seconds",
        &load_seconds,
        "--producer-url",
        &producer.url,
        "--query-url",
        &query.url,
    ];
    let load_env = [("FOLDLINE_TOKEN", token.as_str())];
    let load = probe::run::<Visible>(&load_args, &load_env);
    let scratch = std::env::temp_dir().join(foldline_testkit::unique("foldline-profile"));
    std::fs::create_dir_all(&scratch)?;
    let sampled = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let targets = [("producer", &producer), ("projector", &projector)];
        let pids: Vec<u32> = targets.iter().map(|(_, p)| p.pid().unwrap_or(0)).collect();
        let cpu_before: Vec<u64> = pids.iter().map(|p| crate::cpu::cpu_us(*p)).collect();
        let commands_before = commands(&producer).await;
        let files: Vec<PathBuf> = targets
            .iter()
            .map(|(name, _)| scratch.join(format!("{name}.perf")))
            .collect();
        let records = futures::future::join_all(
            pids.iter()
                .zip(&files)
                .map(|(pid, file)| perf_record(*pid, file, args.seconds)),
        )
        .await;
        records.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        let events = (commands(&producer).await - commands_before).max(1.0);
        let cpu: Vec<f64> = pids
            .iter()
            .zip(&cpu_before)
            .map(|(p, b)| crate::cpu::cpu_us(*p).saturating_sub(*b) as f64 / events)
            .collect();
        anyhow::Ok(cpu)
    };
    let (visible, cpu) = tokio::join!(load, sampled);
    let (visible, cpu) = (visible?, cpu?);
    drop((producer, projector, query));
    let mut processes = Vec::new();
    for (name, cpu_us_per_event) in ["producer", "projector"].into_iter().zip(cpu) {
        let folded = fold(&args.inferno, &scratch.join(format!("{name}.perf")))?;
        let svg = args.repo.join(format!("docs/profiles/{name}.svg"));
        let title = format!(
            "foldline-{name} at {} writes/s ({})",
            args.rate,
            &provenance.date[..10]
        );
        flamegraph(&args.inferno, &folded, &title, &svg)?;
        processes.push(summarize(name, cpu_us_per_event, &folded));
    }
    std::fs::remove_dir_all(&scratch)?;
    let result = ProfileResult {
        provenance,
        rate: args.rate,
        seconds: args.seconds,
        visible,
        processes,
    };
    crate::record::write(&args.out, &result)
}

/// The producer's `producer_commands_total`, every label summed.
async fn commands(producer: &Spawned) -> f64 {
    producer
        .metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("producer_commands_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

async fn perf_record(pid: u32, out: &Path, seconds: u64) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("perf")
        .args(["record", "-q", "-F", "199", "--call-graph", "dwarf,32768"])
        .args(["-p", &pid.to_string(), "-o"])
        .arg(out)
        .args(["--", "sleep", &seconds.to_string()])
        .stderr(Stdio::null())
        .status()
        .await?;
    anyhow::ensure!(status.success(), "perf record of {pid}: {status}");
    Ok(())
}

/// `perf script | inferno-collapse-perf`: one line per stack, `frame;frame;… count`.
fn fold(inferno: &Path, perf_data: &Path) -> anyhow::Result<String> {
    let script = std::process::Command::new("perf")
        .args(["script", "-i"])
        .arg(perf_data)
        .stderr(Stdio::null())
        .output()?;
    let mut collapse = std::process::Command::new(inferno.join("inferno-collapse-perf"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdin = collapse.stdin.take().expect("piped");
    let feeding = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &script.stdout));
    let out = collapse.wait_with_output()?;
    feeding.join().expect("feeding thread")?;
    Ok(String::from_utf8(out.stdout)?)
}

fn flamegraph(inferno: &Path, folded: &str, title: &str, svg: &Path) -> anyhow::Result<()> {
    let mut draw = std::process::Command::new(inferno.join("inferno-flamegraph"))
        .args(["--title", title])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(svg)?)
        .spawn()?;
    std::io::Write::write_all(&mut draw.stdin.take().expect("piped"), folded.as_bytes())?;
    anyhow::ensure!(draw.wait()?.success(), "inferno-flamegraph failed");
    Ok(())
}

/// The functions with the most samples of their own, and Foldline's functions with the most
/// samples in or under them.
fn summarize(name: &str, cpu_us_per_event: f64, folded: &str) -> ProcessProfile {
    let (mut own, mut under): (HashMap<&str, u64>, HashMap<&str, u64>) = Default::default();
    let mut samples = 0;
    for line in folded.lines() {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        samples += count;
        let frames: Vec<&str> = stack.split(';').collect();
        if let Some(leaf) = frames.last() {
            *own.entry(leaf).or_default() += count;
        }
        let mut seen: Vec<&str> = frames.clone();
        seen.sort_unstable();
        seen.dedup();
        for frame in seen.into_iter().filter(|f| f.contains("foldline")) {
            *under.entry(frame).or_default() += count;
        }
    }
    let top = |counts: HashMap<&str, u64>| -> Vec<Share> {
        let mut sorted: Vec<(&str, u64)> = counts.into_iter().collect();
        sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        sorted
            .into_iter()
            .take(12)
            .map(|(function, count)| Share {
                percent: (1000.0 * count as f64 / samples.max(1) as f64).round() / 10.0,
                function: function.chars().take(110).collect(),
            })
            .collect()
    };
    ProcessProfile {
        name: name.to_owned(),
        cpu_us_per_event: cpu_us_per_event.round(),
        weight: samples,
        own: top(own),
        under: top(under),
    }
}

/// The section `profile` of docs/benchmarks.md.
pub fn render(r: &ProfileResult) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Measured {} on {} (commit `{}`), by `scripts/bench profile --rate {}` \
         (bench/results/profile.json): {} s sampled at 199 Hz; write → visible p50 {:.1} ms, \
         p99 {:.1} ms meanwhile.\n",
        r.provenance.when(),
        r.provenance.machine,
        r.provenance.commit,
        r.rate,
        r.seconds,
        r.visible.p50_ms,
        r.visible.p99_ms
    );
    let groups: BTreeMap<&str, &ProcessProfile> =
        r.processes.iter().map(|p| (p.name.as_str(), p)).collect();
    for (name, p) in groups {
        let _ = writeln!(
            out,
            "**foldline-{name}**: {:.0} µs of CPU per event over the sampled interval \
             ([flame graph](profiles/{name}.svg)); shares of its sampled CPU time.\n",
            p.cpu_us_per_event
        );
        out.push_str("| own samples | function | | in or under | Foldline's function |\n|---:|---|---|---:|---|\n");
        for i in 0..p.own.len().max(p.under.len()) {
            let cell = |shares: &[Share]| {
                shares.get(i).map_or((String::new(), String::new()), |s| {
                    (
                        format!("{:.1} %", s.percent),
                        format!("`{}`", s.function.replace('|', "\\|")),
                    )
                })
            };
            let ((a, b), (c, d)) = (cell(&p.own), cell(&p.under));
            let _ = writeln!(out, "| {a} | {b} | | {c} | {d} |");
        }
        out.push('\n');
    }
    out
}
