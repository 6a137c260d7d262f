"""Fails when requirements.lock no longer satisfies requirements.in (someone edited the .in and
did not run scripts/lock-python), or when the lock pins a package without hashes."""

import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

here = Path(__file__).parent
pins = {
    canonicalize_name(name): version
    for name, version in re.findall(
        r"^([A-Za-z0-9._-]+)==([^ \\]+)", (here / "requirements.lock").read_text(), re.M
    )
}
problems = []
for line in (here / "requirements.in").read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    wanted = Requirement(line)
    locked = pins.get(canonicalize_name(wanted.name))
    if locked is None:
        problems.append(f"{wanted.name} is not in requirements.lock")
    elif not wanted.specifier.contains(locked, prereleases=True):
        problems.append(f"{wanted.name}: locked {locked} does not satisfy '{wanted.specifier}'")
entries = re.split(r"\n(?=[A-Za-z0-9])", (here / "requirements.lock").read_text())
for entry in entries:
    if re.match(r"[A-Za-z0-9]", entry) and "--hash=sha256:" not in entry:
        problems.append(f"no hash for: {entry.splitlines()[0]}")
for problem in problems:
    print(f"requirements.lock: {problem}", file=sys.stderr)
if problems:
    sys.exit("requirements.lock is out of date: run scripts/lock-python and commit it")
print(f"requirements.lock: {len(pins)} pinned packages, every one hashed, satisfies requirements.in")
