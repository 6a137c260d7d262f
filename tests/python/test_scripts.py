"""The scripts build what they run: a binary a script starts from the build directory comes
from a package its own `cargo build` names, and every package named exists. (Moving binaries
between crates once left scripts/up building a crate that no longer held two of them.)"""

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


def cargo_builds(script):
    """The packages each `cargo build` of `script` names (continuation lines joined)."""
    text = script.read_text().replace("\\\n", " ")
    return [re.findall(r"-p ([A-Za-z0-9_-]+)", line) for line in text.splitlines() if "cargo build" in line]


def test_every_package_a_script_names_exists():
    known = packages()
    for script in [*ROOT.glob("scripts/*"), ROOT / ".ci" / "run"]:
        if not script.is_file() or script.suffix in {".lock", ".in", ".py"}:
            continue
        text = script.read_text(errors="replace").replace("\\\n", " ")
        for name in re.findall(r"cargo (?:build|test|run)[^\n]*?-p ([A-Za-z0-9_-]+)", text):
            assert name in known, f"{script.name}: no package {name}"


def test_scripts_up_builds_every_binary_it_starts():
    up = ROOT / "scripts" / "up"
    built = set()
    for names in cargo_builds(up):
        for name in names:
            built |= packages()[name]
    started = set(re.findall(r'"\$BIN/(foldline[a-z-]*)"', up.read_text()))
    assert started, "scripts/up starts no binary?"
    assert started <= built, f"scripts/up starts {started - built} but does not build them"


def test_each_bench_builds_the_binaries_it_starts():
    bench = (ROOT / "scripts" / "bench").read_text()
    known = packages()
    # One shell function per benchmark: bench_<name>() { ... }
    for name, body in re.findall(r"^(bench_[a-z_]+)\(\) \{\n(.*?)^\}", bench, re.M | re.S):
        body = body.replace("\\\n", " ")
        built = set()
        for line in body.splitlines():
            if "cargo build" in line:
                for package in re.findall(r"-p ([A-Za-z0-9_-]+)", line):
                    built |= known[package]
        started = set(re.findall(r'"\$bin/(foldline[a-z-]*)"', body))
        assert started <= built, f"{name} starts {started - built} without building them"
