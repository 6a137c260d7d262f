"""The operators' view: ops/grafana's dashboard and ops/prometheus's scrape configuration.

The dashboard must be valid Grafana JSON wired to the provisioned data source, and every query
must name metrics the binaries really export, under the job that exports them. For that the
test runs every Foldline service on the test stack, writes through the producer, puts one
undecodable record on the topic (so the dead-letter metrics exist), and reads each /metrics."""

import json
import os
import pathlib
import re
import time

import pytest
import yaml

from services import AVAILABLE, REASON, TOPIC, Process, free_port, get_text, post, projector, recent_events

ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops" / "grafana" / "dashboards" / "foldline.json"
PROVISIONING = ROOT / "ops" / "grafana" / "provisioning"
PROMETHEUS = ROOT / "ops" / "prometheus" / "prometheus.yml"
RULES = sorted((ROOT / "ops" / "prometheus" / "rules").glob("*.yml"))
# Series Prometheus makes itself, not the binaries.
PROMETHEUS_SERIES = {"up", "ALERTS"}
COMPOSE = ROOT / "docker-compose.redpanda.yml"

PROMQL_WORDS = {
    "sum", "rate", "irate", "increase", "histogram_quantile", "by", "without", "max", "min", "avg",
    "count", "topk", "bottomk", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "le", "delta", "deriv", "abs", "clamp_min", "clamp_max", "time", "vector", "scalar",
}


def dashboard():
    return json.loads(DASHBOARD.read_text())


def queries():
    """(panel title, expr) of every target."""
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p["targets"]]


def metric_names(expr):
    """The metric names a PromQL expression selects, each with the job its matchers require."""
    # Ranges ([5m]) and grouping lists (by (job, le)) name no metric.
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = []
    for match in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?", expr):
        name, matchers = match.group(1), match.group(2) or ""
        if name in PROMQL_WORDS or expr[match.end():].lstrip().startswith("("):
            continue
        job = re.search(r'job="([^"]+)"', matchers)
        names.append((name, job.group(1) if job else None))
    return names


def rules():
    """Every rule of ops/prometheus/rules: (name, expr, is a recording rule)."""
    return [(r.get("record") or r["alert"], r["expr"], "record" in r)
            for f in RULES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]


def recorded():
    return {name for name, _, is_record in rules() if is_record}


def check_names(what, expr, scrapes, everything):
    """Each metric `expr` selects is exported by the binaries (by its job when it names one), is
    recorded by a rule, or is one Prometheus makes. Returns how many were checked."""
    names = metric_names(expr)
    assert names or expr.startswith("vector("), f"{what}: no metric found in {expr}"
    for name, job in names:
        if name in PROMETHEUS_SERIES or name in recorded():
            continue
        if job and job in scrapes:
            assert name in scrapes[job], f"{what}: job {job} does not export {name}"
        else:
            assert name in everything, f"{what}: no binary exports {name}"
    return len(names)


def test_metric_names_are_read_from_promql():
    assert metric_names('histogram_quantile(0.99, sum by (le, route) (rate(x_bucket{job="producer"}[5m])))') == [
        ("x_bucket", "producer")]
    assert metric_names("sum by (job, partition) (lag) + on (job) y") == [("lag", None), ("y", None)]


def test_the_dashboard_is_valid_and_uses_the_provisioned_data_source():
    board = dashboard()
    assert board["uid"] and board["title"] == "Foldline"
    source = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in board["panels"]:
        assert panel["title"] and panel["description"], panel
        assert panel["datasource"]["uid"] == source["uid"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    # What the issue asks to see, each on some panel.
    exprs = " ".join(e for _, e in queries())
    for metric in ("consumer_lag_records", "consumer_events_total", "http_requests_total",
                   "http_request_duration_seconds_bucket", "consumer_dead_lettered_total", "sse_clients",
                   "consumer_batch_write_seconds_bucket"):
        assert metric in exprs, f"no panel shows {metric}"


def test_compose_provisions_prometheus_and_grafana_with_these_files():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    grafana_volumes = services["grafana"]["volumes"]
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "foldline.yml").read_text())["providers"][0]
    assert any(v.startswith("./ops/grafana/dashboards:" + provider["options"]["path"]) for v in grafana_volumes)
    assert any(v.startswith("./ops/grafana/provisioning:/etc/grafana/provisioning") for v in grafana_volumes)
    # The whole folder, so the configuration finds its rules/ as it does locally.
    assert "./ops/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    # Every Foldline service is scraped as a job named after it, at the port it listens on.
    jobs = {job["job_name"]: job["static_configs"][0]["targets"][0]
            for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    for name in ("producer", "projector", "query", "notifier", "archiver", "recent-events"):
        listen = [v for k, v in services[name]["environment"].items() if k.endswith("_LISTEN")][0]
        assert jobs[name] == f"{name}:{listen.split(':')[1]}", (name, jobs.get(name), listen)


@pytest.fixture(scope="module")
def scrapes():
    """Metric names exported per job, with every service running and having done its work."""
    if not AVAILABLE:
        pytest.skip(REASON)
    ports = {name: free_port() for name in ("projector", "query", "recent-events")}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    procs = [
        projector(ports["projector"]),
        Process("query", {"FOLDLINE_TOPIC": TOPIC, "FOLDLINE_QUERY_LISTEN": f"127.0.0.1:{ports['query']}"},
                url["query"]),
        recent_events(ports["recent-events"]),
    ]
    for p in procs:
        p.start()
    try:
        created = post("/products", {"name": "Dash lamp", "price_cents": 100, "stock": 9, "seller_id": "ops"})
        adjusted = post(f"/products/{created['id']}/stock", {"delta": -1})
        from confluent_kafka import Producer

        garbage = Producer({"bootstrap.servers": os.environ["FOLDLINE_BROKERS"]})
        garbage.produce(TOPIC, key=b"dashboard-test", value=b"not avro at all")
        garbage.flush(30)
        urls = {"producer": os.environ["FOLDLINE_PRODUCER_URL"], "notifier": os.environ["FOLDLINE_NOTIFIER_URL"],
                "archiver": os.environ["FOLDLINE_ARCHIVER_URL"], **url}
        get_text(url["query"] + f"/products/{created['id']}?after={adjusted['position']}")
        # Labelled metrics exist once something happened: wait for the dead letter and the lag.
        deadline = time.time() + 60
        while True:
            names = {job: exported(u) for job, u in urls.items()}
            consumers = ("projector", "archiver", "recent-events")
            if all({"consumer_dead_lettered_total", "consumer_lag_records"} <= names[c] for c in consumers):
                return names
            if time.time() > deadline:
                return names
            time.sleep(1)
    finally:
        for p in procs:
            p.stop()


def exported(url):
    return {line.split("{")[0].split(" ")[0] for line in get_text(url + "/metrics").splitlines()
            if line and not line.startswith("#")}


def test_every_dashboard_query_names_a_metric_the_binaries_export(scrapes):
    everything = set().union(*scrapes.values())
    checked = sum(check_names(title, expr, scrapes, everything) for title, expr in queries())
    assert checked >= 15
    exprs = " ".join(e for _, e in queries())
    for shown in ("foldline:write_errors:ratio_rate5m", "foldline:visible_late:ratio_rate5m", "ALERTS"):
        assert shown in exprs, f"no panel shows {shown}"


def test_every_alert_and_recording_rule_names_a_metric_the_binaries_export(scrapes):
    everything = set().union(*scrapes.values())
    checked = sum(check_names(name, expr, scrapes, everything) for name, expr, _ in rules())
    assert checked >= 30
    # Every alert has a promtool unit test (ops/prometheus/tests, run by scripts/test).
    tested = " ".join(f.read_text() for f in (ROOT / "ops" / "prometheus" / "tests").glob("*.yml"))
    for name, _, is_record in rules():
        if not is_record:
            assert f"alertname: {name}\n" in tested, f"{name} has no promtool test"
