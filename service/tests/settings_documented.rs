//! Every setting a binary reads from the environment (`env = "…"` in its clap definitions)
//! is in the configuration table (docs/configuration.md), so the table cannot drift from the code.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if path.is_dir() && !name.starts_with('.') && name != "target" {
            rust_files(&path, found);
        } else if name.ends_with(".rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_env_setting_is_in_the_configuration_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let docs = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let table: String = docs
        .lines()
        .filter(|line| line.starts_with("| `"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut files = Vec::new();
    rust_files(root, &mut files);
    let mut settings = std::collections::BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for part in text.split("env = \"").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                settings.insert(name.to_owned());
            }
        }
    }
    assert!(settings.len() > 40, "found only {settings:?}");
    let missing: Vec<_> = settings
        .iter()
        .filter(|name| !table.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "settings read by the binaries but missing from docs/configuration.md: {missing:?}"
    );
}

/// The README's architecture table names, per stage, the crate and the files to read first:
/// each named file or folder exists (relative to its crate, or to the repository).
#[test]
fn every_file_the_architecture_table_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme
        .split("## Architecture")
        .nth(1)
        .expect("an architecture section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut checked = 0;
    for row in section
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| stage"))
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let crates: Vec<&str> = cells[2].split('`').skip(1).step_by(2).collect();
        for name in cells[3].split('`').skip(1).step_by(2) {
            let name = name.split(' ').next().unwrap();
            if !(name.ends_with(".rs") || name.ends_with('/') || name.ends_with(".html")) {
                continue;
            }
            let found =
                root.join(name).exists() || crates.iter().any(|c| root.join(c).join(name).exists());
            assert!(
                found,
                "README architecture: {name} (crates {crates:?}) does not exist"
            );
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} paths checked");
}
