"""Helpers for Python tests that run Foldline services of their own (to stop and start them):
free ports, writes through scripts/test's producer, and a startable/stoppable service."""

import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.request
import uuid

PRODUCER = os.environ.get("FOLDLINE_PRODUCER_URL")
TOPIC = os.environ.get("FOLDLINE_TEST_TOPIC")
BINS = {name: os.environ.get(f"FOLDLINE_{name.upper().replace('-', '_')}_BIN")
        for name in ("projector", "query", "notifier", "recent-events")}
# An admin token minted by scripts/test with the producer's secret.
TOKEN = os.environ.get("FOLDLINE_TEST_TOKEN", "")
LOGS = pathlib.Path(os.environ.get("FOLDLINE_TEST_DATA", ".foldline")) / "logs"
# One projector group for every module of a run: modules that start a projector continue where
# the previous one stopped, so the shared read model counts each event once.
PROJECTOR_GROUP = f"py-projector-{os.getpid()}"
# Likewise one recent-events table and group.
RECENT_EVENTS_TABLE = f"RecentEventsPy{os.getpid()}"

AVAILABLE = bool(PRODUCER and TOPIC and all(BINS.values()) and os.environ.get("FOLDLINE_DATABASE_URL"))
REASON = "needs the producer, its topic, the service binaries and PostgreSQL from scripts/test"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(path, body, method="POST"):
    request = urllib.request.Request(
        PRODUCER + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN}",
                 "idempotency-key": str(uuid.uuid4())},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def get_text(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def wait_ready(url, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready within {seconds} s")


class Process:
    """One service binary on a fixed port, startable and stoppable (SIGTERM, then SIGKILL)."""

    def __init__(self, name, env, url):
        self.name, self.env, self.url, self.process = name, env, url, None

    def start(self):
        LOGS.mkdir(parents=True, exist_ok=True)
        log = open(LOGS / f"py-{self.name}.log", "ab")
        self.process = subprocess.Popen([BINS[self.name]], env={**os.environ, **self.env}, stdout=log, stderr=log)
        wait_ready(self.url)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def projector(port):
    return Process("projector", {"FOLDLINE_TOPIC": TOPIC, "FOLDLINE_PROJECTOR_LISTEN": f"127.0.0.1:{port}",
                                 "FOLDLINE_PROJECTOR_GROUP": PROJECTOR_GROUP}, f"http://127.0.0.1:{port}")


def recent_events(port):
    return Process("recent-events", {"FOLDLINE_TOPIC": TOPIC, "FOLDLINE_RECENT_EVENTS_LISTEN": f"127.0.0.1:{port}",
                                     "FOLDLINE_RECENT_EVENTS_TABLE": RECENT_EVENTS_TABLE,
                                     "FOLDLINE_RECENT_EVENTS_GROUP": f"py-recent-{os.getpid()}"},
                   f"http://127.0.0.1:{port}")
