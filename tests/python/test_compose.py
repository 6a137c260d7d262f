"""docker-compose.redpanda.yml: valid for docker-compose, and it runs everything the local
stack runs, on the contract's ports, each Foldline service with a healthcheck and ordered
start-up. No Docker engine runs here, so this is as far as a test can go."""

import pathlib
import re
import subprocess

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.redpanda.yml"

# Local process (scripts/up) → the compose service that plays its part.
COUNTERPART = {
    "s3": "minio",
    "broker": "redpanda",
    "schema-registry": "redpanda",  # Redpanda's built-in registry
    "postgres": "postgres",
    "producer": "producer",
    "projector": "projector",
    "query": "query",
    "notifier": "notifier",
    "dynamodb": "dynamodb",
    "archiver": "archiver",
    "recent-events": "recent-events",
}
CONTRACT_PORTS = {9092, 8081, 8080, 8082, 8083, 5432, 9000, 8000}


def config():
    out = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config"], capture_output=True, text=True, check=True
    ).stdout
    return yaml.safe_load(out)


def local_stack_processes():
    up = (ROOT / "scripts" / "up").read_text()
    names = set(re.findall(r"start_process ([a-z-]+)", up))
    names |= {m for m in ("s3", "broker", "postgres", "dynamodb") if f"start_{m} " in up}
    return names


def test_the_file_is_valid_for_docker_compose():
    assert config()["services"]


def test_every_local_stack_process_has_a_compose_service():
    services = config()["services"]
    processes = local_stack_processes()
    assert {"producer", "projector", "query", "schema-registry"} <= processes
    for process in processes:
        assert process in COUNTERPART, f"scripts/up starts {process}: map it to a compose service"
        assert COUNTERPART[process] in services, f"{process} has no compose service"


def test_the_contract_ports_are_published():
    published = set()
    for service in config()["services"].values():
        for port in service.get("ports", []):
            published.add(int(port["published"]) if isinstance(port, dict) else int(str(port).split(":")[0]))
    assert CONTRACT_PORTS <= published, CONTRACT_PORTS - published


def test_foldline_services_have_healthchecks_and_wait_for_their_dependencies():
    services = config()["services"]
    for name in ("producer", "projector", "query", "notifier", "archiver", "recent-events"):
        service = services[name]
        assert "healthcheck" in service, name
        assert service.get("depends_on"), name
        assert service["build"], name
    assert services["init"]["depends_on"]["redpanda"]["condition"] == "service_healthy"
