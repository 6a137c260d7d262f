//! `foldline-conformance`: checks that a Kafka-API broker keeps the semantics Foldline
//! relies on (transactions, fencing, idempotence, offsets, long-poll fetch).

use std::process::ExitCode;

use clap::Parser;
use foldline_conformance::{run_all, Target};

/// Checks the Kafka semantics Foldline relies on against a broker. Exit status 1 when a check
/// fails.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Bootstrap servers of the broker to check (checks that must kill the broker are not run).
    #[arg(
        long,
        env = "FOLDLINE_BROKERS",
        default_value = "127.0.0.1:9092",
        conflicts_with = "own_broker"
    )]
    brokers: String,
    /// Start a broker of the suite's own instead (FOLDLINE_BROKER_BIN, else `nisshi` on the
    /// PATH; its log under FOLDLINE_TEST_DATA or the temp folder) and run every check.
    #[arg(long)]
    own_broker: bool,
    /// Run only these checks (by name; repeatable).
    #[arg(long = "check")]
    only: Vec<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// What the broker is, for the report (e.g. "redpanda 24.2").
    #[arg(long)]
    label: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let target = match if args.own_broker {
        Target::own()
    } else {
        Target::given(&args.brokers)
    } {
        Ok(target) => target,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(2);
        }
    };
    let report = run_all(&target, &args.only, args.label);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report serialises")
        );
    }
    let failed = report.failed();
    eprintln!(
        "{} checks: {} failed, against {} ({} broker)",
        report.checks.len(),
        failed,
        report.brokers,
        report.broker
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
