"""docker/: what can be checked without a Docker engine.

* docker-compose.yml is valid against the Compose specification's JSON schema
  (vendored in docker/compose-spec.schema.json);
* every path, port and flag it and the Dockerfiles name exists in the project
  and matches the CLIs' ``--help``;
* the images' entry commands run outside Docker: the service's on free ports
  (the health check passes, SIGTERM exits 0), a tiny trainer arm against it and
  the report.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
SCHEMA = json.loads((DOCKER / "compose-spec.schema.json").read_text())
BIN = Path(sys.executable).parent


def dockerfile(name: str) -> dict[str, list[str]]:
    """Instructions of a Dockerfile: {INSTRUCTION: [argument text, ...]}."""
    text = re.sub(r"\\\n", " ", (DOCKER / name).read_text())
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, rest = line.partition(" ")
            out.setdefault(instr.upper(), []).append(rest.strip())
    return out


SERVICE_DF = dockerfile("Dockerfile.service")
# services that run a public image, pinned (no build of ours)
EXTERNAL = {"prometheus", "grafana"}
TRAINER_DF = dockerfile("Dockerfile.trainer")


def exec_form(arg: str) -> list[str]:
    return json.loads(arg)


def help_flags(main, argv: list[str]) -> set[str]:
    """The --flags a CLI's --help lists (run in-process)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main([*argv, "--help"])
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", buf.getvalue()))


def flags(cmd: list[str]) -> set[str]:
    return {a for a in cmd if a.startswith("--")}


def opt(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    validator = jsonschema.Draft201909Validator(SCHEMA)
    validator.validate(COMPOSE)
    broken = json.loads(json.dumps(COMPOSE))
    broken["services"]["rankboard"]["healthcheck"]["retries"] = "many"
    broken["services"]["control"]["depends_on"]["rankboard"]["condition"] = "service_ready"
    assert len(list(validator.iter_errors(broken))) == 2


def test_paths_in_compose_and_dockerfiles_exist() -> None:
    for name, svc in COMPOSE["services"].items():
        build = svc.get("build")
        if build is None and name in EXTERNAL:
            continue  # a pinned public image (test_external_images_are_pinned)
        if build is None:  # reuses an image built by another service
            assert any(
                s.get("image") == svc["image"] and "build" in s
                for s in COMPOSE["services"].values()
            ), name
            continue
        context = (DOCKER / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).is_file()
        ignore = context / f"{build['dockerfile']}.dockerignore"
        assert ignore.is_file()
    for df in (SERVICE_DF, TRAINER_DF):
        for copy in df["COPY"]:
            *sources, _dest = copy.split()
            for src in sources:
                assert (ROOT / src).exists(), src
    # /app is the repository root inside the images (WORKDIR + COPY)
    assert SERVICE_DF["WORKDIR"] == TRAINER_DF["WORKDIR"] == ["/app"]
    for svc in COMPOSE["services"].values():
        for arg in svc.get("command", []):
            if arg.startswith("/app/"):
                assert (ROOT / arg.removeprefix("/app/")).is_file(), arg
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):  # bind mounts: relative to docker/
                assert (DOCKER / source).exists(), volume


def test_commands_and_ports_match_the_clis() -> None:
    from rankboard.service.cli import main as rankboard_main
    from rankboard.trainer.demo.train import EXPERIMENT
    from rankboard.trainer.demo.train import main as train_main

    services = COMPOSE["services"]
    serve = services["rankboard"]["command"]
    assert exec_form(SERVICE_DF["ENTRYPOINT"][0]) == ["rankboard"]
    assert exec_form(SERVICE_DF["CMD"][0]) == serve
    assert serve[0] == "serve"
    assert flags(serve) <= help_flags(rankboard_main, ["serve"])
    grpc_port, http_port = opt(serve, "--grpc-port"), opt(serve, "--http-port")
    published = {p.split(":")[-1] for p in services["rankboard"]["ports"]}
    assert published == {grpc_port, http_port} == set(SERVICE_DF["EXPOSE"][0].split())
    data_dir = opt(serve, "--data-dir")
    assert any(v.endswith(f":{data_dir}") for v in services["rankboard"]["volumes"])
    assert exec_form(SERVICE_DF["VOLUME"][0]) == [data_dir]
    health = services["rankboard"]["healthcheck"]["test"]
    assert health[0] == "CMD" and f"127.0.0.1:{http_port}/healthz" in health[-1]
    assert SERVICE_DF["HEALTHCHECK"][0].split("CMD ", 1)[1] == json.dumps(health[1:])

    train_flags = help_flags(train_main, [])
    assert exec_form(TRAINER_DF["ENTRYPOINT"][0])[-1] == "rankboard.trainer.demo.train"
    for cmd in (
        exec_form(TRAINER_DF["CMD"][0]),
        services["control"]["command"],
        services["treatment"]["command"],
    ):
        assert flags(cmd) <= train_flags
        host, port = opt(cmd, "--target").split(":")
        assert host == "rankboard" and port == grpc_port
    report = services["report"]["command"]
    assert services["report"]["entrypoint"] == ["rankboard"]
    assert services["report"]["image"] == services["rankboard"]["image"]
    assert report[0] == "compare"
    assert flags(report) <= help_flags(rankboard_main, ["compare"])
    assert opt(report, "--experiment") == EXPERIMENT
    url = urlparse(opt(report, "--url"))
    assert (url.hostname, str(url.port)) == ("rankboard", http_port)
    for name in ("control", "treatment"):
        assert services[name]["depends_on"]["rankboard"]["condition"] == "service_healthy"


def test_entry_commands_run_outside_docker(tmp_path: Path) -> None:
    services = COMPOSE["services"]
    grpc_port, http_port = str(free_port()), str(free_port())
    serve = services["rankboard"]["command"]
    old = {
        opt(serve, "--grpc-port"): grpc_port,
        opt(serve, "--http-port"): http_port,
        opt(serve, "--data-dir"): str(tmp_path / "data"),
        "0.0.0.0": "127.0.0.1",
    }
    cmd = [str(BIN / "rankboard"), *(old.get(a, a) for a in serve)]
    env = {**os.environ, "RANKBOARD_TOKEN": "compose-write", "RANKBOARD_READ_TOKEN": "compose-read"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"REST on http://127.0.0.1:{http_port}" in line, line
        health = services["rankboard"]["healthcheck"]["test"][1:]
        health = [
            sys.executable if a == "python" else a.replace(":8000/", f":{http_port}/")
            for a in health
        ]
        subprocess.run(health, check=True, timeout=30)

        arm = services["control"]["command"]
        arm = [a.replace("rankboard:50051", f"127.0.0.1:{grpc_port}") for a in arm]
        arm = [str(ROOT / a.removeprefix("/app/")) if a.startswith("/app/") else a for a in arm]
        entry = exec_form(TRAINER_DF["ENTRYPOINT"][0])
        run = subprocess.run(
            [sys.executable, *entry[1:], *arm, "--tiny"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        report = [
            a.replace("http://rankboard:8000", f"http://127.0.0.1:{http_port}")
            for a in services["report"]["command"]
        ]
        out = subprocess.run(
            [str(BIN / "rankboard"), *report],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert "experiment demo, task ctr" in out.stdout, out.stdout
        assert re.search(r"^auc\s+control\s+0\.\d+", out.stdout, re.M), out.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert rc == 0


def _default(value: str) -> str:
    """A compose string with ``${VAR:-default}`` replaced by its default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_external_images_are_pinned() -> None:
    for name in EXTERNAL:
        image = COMPOSE["services"][name]["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), image


def test_compose_is_closed_by_default() -> None:
    """Issue 16 item 14: ports on loopback unless asked, and no service without tokens."""
    services = COMPOSE["services"]
    for name, svc in services.items():
        for port in svc.get("ports", []):
            host = _default(str(port)).rsplit(":", 2)[0]
            assert host == "127.0.0.1", (name, port)
    env = services["rankboard"]["environment"]
    for var in ("RANKBOARD_TOKEN", "RANKBOARD_READ_TOKEN"):
        # ${VAR:?message}: compose refuses to start when the variable is unset or empty
        assert re.fullmatch(rf"\$\{{{var}:\?[^}}]+\}}", env[var]), env[var]
    for name in ("control", "treatment"):
        assert services[name]["environment"]["RANKBOARD_TOKEN"] == env["RANKBOARD_TOKEN"]
    assert services["report"]["environment"]["RANKBOARD_READ_TOKEN"] == env["RANKBOARD_READ_TOKEN"]
    assert (
        services["prometheus"]["environment"]["RANKBOARD_READ_TOKEN"] == env["RANKBOARD_READ_TOKEN"]
    )
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert re.fullmatch(
        r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", grafana["GF_SECURITY_ADMIN_PASSWORD"]
    )
    serve = services["rankboard"]["command"]
    assert "--metrics-public" not in serve  # Prometheus scrapes with the read token


def _promql_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (rankboard's all start with ``rankboard_``)."""
    return set(re.findall(r"\brankboard_[a-z0-9_]+", expr))


def test_grafana_and_prometheus_name_only_what_metrics_serves(tmp_path: Path) -> None:
    """Every metric the Grafana dashboard queries, and the scrape target, exist in a live
    scrape of a real service (no panel that can never show data)."""
    import grpc
    import httpx
    import numpy as np
    from prometheus_client.parser import text_string_to_metric_families

    from rankboard.protos import ingest_pb2, ingest_pb2_grpc
    from rankboard.service.server import ServiceConfig, run_service
    from rankboard.service.state.batch import encode_array

    prom = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    services = COMPOSE["services"]
    serve = services["rankboard"]["command"]
    assert job["static_configs"][0]["targets"] == [f"rankboard:{opt(serve, '--http-port')}"]
    assert job["authorization"]["type"] == "Bearer"
    token_file = job["authorization"]["credentials_file"]
    assert token_file in " ".join(services["prometheus"]["entrypoint"])
    datasource = yaml.safe_load(
        (DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    board = json.loads((DOCKER / "grafana/dashboards/rankboard.json").read_text())

    def walk(panels):
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    exprs = [t["expr"] for p in walk(board["panels"]) for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in board["templating"]["list"]]
    for p in walk(board["panels"]):
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == datasource["uid"]
    wanted = set().union(*map(_promql_names, exprs))
    assert (
        "rankboard_metric_interval_low" in wanted
        and "rankboard_ack_latency_seconds_bucket" in wanted
    )

    rng = np.random.default_rng(0)
    cfg = ServiceConfig(data_dir=tmp_path / "data", device="cpu", read_token="rt", token="wt")
    with run_service(cfg) as svc, grpc.insecure_channel(svc.grpc_target) as channel:
        stub = ingest_pb2_grpc.IngestStub(channel)
        for arm in ("control", "treatment"):
            y = rng.integers(0, 2, 200).astype(np.float32)
            p = np.clip(0.3 + 0.3 * y + rng.normal(0, 0.2, 200), 0, 1).astype(np.float32)
            msg = ingest_pb2.Batch(
                producer_id=arm,
                sequence=1,
                experiment="demo",
                arm=arm,
                task="ctr",
                phase=ingest_pb2.PHASE_EVAL,
                step=1,
                predictions=encode_array(p),
                labels=encode_array(y),
            )
            ack = stub.Send(msg, timeout=30, metadata=[("authorization", "Bearer wt")])
            assert not ack.error_code, ack.error_message
        with httpx.Client(base_url=svc.http_url, timeout=30) as http:
            assert http.get(job["metrics_path"]).status_code == 401  # the token is needed
            text = http.get(job["metrics_path"], headers={"Authorization": "Bearer rt"}).text
    served = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert wanted - served == set()
