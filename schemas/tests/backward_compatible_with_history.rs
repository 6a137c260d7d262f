//! The schema evolution gate: every `.avsc` in `schemas/avro/` as it is now must be able to
//! read data written with *every* version of it committed in git (BACKWARD_TRANSITIVE), so an
//! incompatible change fails CI before any producer could write it.

use std::path::{Path, PathBuf};
use std::process::Command;

use apache_avro::Schema;
use foldline_schemas::compat::{check, CompatibilityLevel};

fn git(repo: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .expect("git must be installed to check schema history");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("git prints UTF-8")
}

fn avro_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("avro");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("schemas/avro exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "avsc"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_schema_reads_all_its_committed_versions() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let top = PathBuf::from(git(crate_dir, &["rev-parse", "--show-toplevel"]).trim());
    assert_eq!(
        git(&top, &["rev-parse", "--is-shallow-repository"]).trim(),
        "false",
        "a shallow clone hides schema history; fetch with full depth"
    );
    let files = avro_files();
    assert!(!files.is_empty(), "no .avsc files found");
    let mut failures = Vec::new();
    for file in files {
        let relative = file
            .strip_prefix(&top)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let current = Schema::parse_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{relative} does not parse: {e}"));
        // Oldest first, so messages name versions as 1, 2, 3 ...
        let commits = git(&top, &["log", "--reverse", "--format=%H", "--", &relative]);
        let earlier: Vec<Schema> = commits
            .lines()
            .map(|commit| {
                let text = git(&top, &["show", &format!("{commit}:{relative}")]);
                Schema::parse_str(&text)
                    .unwrap_or_else(|e| panic!("{relative} at {commit} does not parse: {e}"))
            })
            .collect();
        for problem in check(CompatibilityLevel::BackwardTransitive, &earlier, &current) {
            failures.push(format!("{relative}: {problem}"));
        }
    }
    assert!(
        failures.is_empty(),
        "incompatible schema changes:\n{}",
        failures.join("\n")
    );
}

/// The gate itself must fail on an incompatible edit: the envelope as it is now, with a new
/// required field (no default), is checked against the same git history.
#[test]
fn the_gate_rejects_a_required_field_added_to_the_envelope() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let top = PathBuf::from(git(crate_dir, &["rev-parse", "--show-toplevel"]).trim());
    let relative = "schemas/avro/products-value.avsc";
    let commits = git(&top, &["log", "--reverse", "--format=%H", "--", relative]);
    let earlier: Vec<Schema> = commits
        .lines()
        .map(|c| Schema::parse_str(&git(&top, &["show", &format!("{c}:{relative}")])).unwrap())
        .collect();
    assert!(!earlier.is_empty(), "the envelope has history in git");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(top.join(relative)).unwrap()).unwrap();
    let with_field = |json: &serde_json::Value, field: serde_json::Value| {
        let mut json = json.clone();
        json["fields"].as_array_mut().unwrap().push(field);
        Schema::parse_str(&json.to_string()).unwrap()
    };
    let required = with_field(
        &json,
        serde_json::json!({"name": "tenant", "type": "string"}),
    );
    let problems = check(CompatibilityLevel::BackwardTransitive, &earlier, &required);
    assert!(!problems.is_empty(), "a required field must fail the gate");
    // The same field as optional with a default is a compatible change.
    let optional = with_field(
        &json,
        serde_json::json!({"name": "tenant", "type": ["null", "string"], "default": null}),
    );
    assert_eq!(
        check(CompatibilityLevel::BackwardTransitive, &earlier, &optional),
        Vec::<String>::new()
    );
}

/// A value of `schema` with every field set (unions take their first non-null branch, so
/// optional fields carry a value), the payload union at `branch`.
fn sample_value(schema: &Schema, branch: usize) -> apache_avro::types::Value {
    use apache_avro::types::Value;
    match schema {
        Schema::Record(record) => Value::Record(
            record
                .fields
                .iter()
                .map(|field| {
                    let value = match (&field.schema, field.name.as_str()) {
                        (Schema::Union(union), "payload") => Value::Union(
                            branch as u32,
                            Box::new(sample_value(&union.variants()[branch], 0)),
                        ),
                        (Schema::String, name) => Value::String(format!("s-{name}")),
                        (other, _) => sample_value(other, 0),
                    };
                    (field.name.clone(), value)
                })
                .collect(),
        ),
        Schema::Union(union) => {
            let index = union
                .variants()
                .iter()
                .position(|v| *v != Schema::Null)
                .unwrap_or(0);
            Value::Union(
                index as u32,
                Box::new(sample_value(&union.variants()[index], 0)),
            )
        }
        Schema::Null => Value::Null,
        Schema::Boolean => Value::Boolean(true),
        Schema::Int => Value::Int(7),
        Schema::Long => Value::Long(7),
        Schema::String => Value::String("s".into()),
        Schema::Uuid(_) => Value::Uuid(uuid::Uuid::from_u128(7)),
        Schema::TimestampMillis => Value::TimestampMillis(1_763_769_600_000),
        other => panic!("extend sample_value for {other:?}"),
    }
}

/// Every committed version of the envelope, every event type of it: a record written with
/// that version decodes through the one reader every read path uses, as the current shape.
#[test]
#[allow(deprecated)]
fn a_record_of_every_committed_version_reads_as_the_current_shape() {
    use foldline_schemas::read::{read_envelope, WriterSchema};
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let top = PathBuf::from(git(crate_dir, &["rev-parse", "--show-toplevel"]).trim());
    let relative = "schemas/avro/products-value.avsc";
    let commits = git(&top, &["log", "--reverse", "--format=%H", "--", relative]);
    let mut read = 0;
    for commit in commits.lines() {
        let old =
            Schema::parse_str(&git(&top, &["show", &format!("{commit}:{relative}")])).unwrap();
        let writer = WriterSchema::of(&old).unwrap();
        for (index, branch) in writer.branches.iter().enumerate() {
            let value = sample_value(&old, index);
            let bytes = apache_avro::to_avro_datum(&old, value).unwrap();
            let decoded = apache_avro::from_avro_datum(&old, &mut bytes.as_slice(), None).unwrap();
            let event = read_envelope(&decoded, &writer, None)
                .unwrap_or_else(|e| panic!("{commit} {}: {e}", branch.name));
            assert_eq!(event.event_type().as_str(), branch.name, "{commit}");
            assert_eq!(event.product_id, "s-product_id");
            assert_eq!(event.version, 7);
            read += 1;
        }
    }
    assert!(
        read >= 10,
        "two versions of five event types at least: {read}"
    );
}
