"""The scripts build what they run: scripts/up, every bench and the upgrade drill build one
set of release artifacts (every binary of the workspace), so none re-compiles what another
built, and every package a script names exists. (Moving binaries between crates once left
scripts/up building a crate that no longer held two of them.)"""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def packages():
    """Workspace package name -> the binaries it builds."""
    found = {}
    for manifest in ROOT.glob("**/Cargo.toml"):
        if "target" in manifest.parts or manifest.parent == ROOT:
            continue
        text = manifest.read_text()
        name = re.search(r'^name\s*=\s*"([^"]+)"', text, re.M).group(1)
        bins = set(re.findall(r'\[\[bin\]\]\s*name\s*=\s*"([^"]+)"', text))
        if (manifest.parent / "src" / "main.rs").exists() and not bins:
            bins.add(name)
        found[name] = bins
    return found


def test_every_package_a_script_names_exists():
    known = packages()
    for script in [*ROOT.glob("scripts/*"), ROOT / ".ci" / "run"]:
        if not script.is_file() or script.suffix in {".lock", ".in", ".py"}:
            continue
        text = script.read_text(errors="replace").replace("\\\n", " ")
        for name in re.findall(r"cargo (?:build|test|run)[^\n]*?-p ([A-Za-z0-9_-]+)", text):
            assert name in known, f"{script.name}: no package {name}"


def test_scripts_up_builds_every_binary_it_starts():
    up = (ROOT / "scripts" / "up").read_text()
    started = set(re.findall(r'"\$BIN/(foldline[a-z-]*)"', up))
    assert started, "scripts/up starts no binary?"
    assert '"$REPO/scripts/install"' in up, "scripts/up runs scripts/install (which builds the release set)"
    every_binary = set().union(*packages().values())
    assert started <= every_binary, f"scripts/up starts {started - every_binary}, which no package builds"


def test_up_every_bench_and_the_drill_build_one_and_the_same_release_set():
    """One set of release artifacts (the workspace's binaries): a bench after scripts/up, or
    one bench after another, compiles nothing again."""
    stack = (ROOT / "scripts" / "lib" / "install.sh").read_text()
    assert "cargo build -q --release --workspace --bins" in stack
    assert '"$REPO/scripts/install"' in (ROOT / "scripts" / "up").read_text()
    for name in ("install", "bench", "upgrade-drill"):
        text = (ROOT / "scripts" / name).read_text()
        assert "build_release" in text, f"scripts/{name} does not build the release set"
        partial = re.findall(r"cargo build[^\n]*--release[^\n]*-p [A-Za-z0-9_-]+", text)
        assert not partial, f"scripts/{name} builds a selection of its own: {partial}"
    bench = (ROOT / "scripts" / "bench").read_text()
    # Functions on one line (`f() { …; }`) and over several.
    functions = dict(re.findall(r"^([a-z_]+)\(\) \{ (.*) \}$", bench, re.M))
    functions.update(re.findall(r"^([a-z_]+)\(\) \{\n(.*?)^\}", bench, re.M | re.S))
    assert "build_release" in functions["own_stack"], "own_stack starts servers unbuilt"
    modes = {name: body for name, body in functions.items() if name.startswith("bench_")}
    assert len(modes) >= 10, f"every mode of scripts/bench is a bench_ function: {sorted(modes)}"
    for name, body in modes.items():
        runs_release = any(s in body for s in ('$BIN', "$REPO/target/release", '"$bin/', "record "))
        if runs_release:
            assert "build_release" in body or "own_stack" in body, (
                f"{name} runs release binaries without building them"
            )
