"""Under scripts/test (FOLDLINE_NO_SKIPS=1) a skipped test fails the run (conftest.py): a
pytest session with one skipping test, run with and without the setting."""

import os
import pathlib
import shutil
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def run_skipping_session(tmp_path, no_skips):
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_one.py").write_text(
        "import pytest\n\n"
        "def test_runs():\n    assert True\n\n"
        "def test_needs_a_service():\n    pytest.skip('no service')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "FOLDLINE_NO_SKIPS"}
    if no_skips:
        env["FOLDLINE_NO_SKIPS"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True)


def test_a_skip_fails_the_session_under_scripts_test(tmp_path):
    done = run_skipping_session(tmp_path, no_skips=True)
    assert done.returncode == 1, done.stdout
    assert "test_one.py::test_needs_a_service: Skipped: no service" in done.stdout


def test_a_skip_is_only_a_skip_elsewhere(tmp_path):
    done = run_skipping_session(tmp_path, no_skips=False)
    assert done.returncode == 0, done.stdout
