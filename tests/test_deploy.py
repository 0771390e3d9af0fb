"""deploy/: what can be checked without a container engine or an init system.

promtool on the Prometheus config and rules (and the rules' unit tests),
systemd-analyze on the unit, and consistency between the files: compose volumes
and mounts, Dockerfile COPY sources, the dashboard's metric names, the config the
images ship. Tests that need a tool skip, saying so, where it is not installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from streamer.pipeline import config as pipeline_config
from streamer.pipeline import telemetry
from streamer.pipeline.supervisor import write_targets

from .conftest import REPO

DEPLOY = REPO / "deploy"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus; .ci/run does)"
)
METRIC_NAME = re.compile(r"\b((?:vad|process)_[a-z_]+|up)\b(?!\s*\()")


def exposed_metric_names() -> set[str]:
    """Every sample name the pipeline's processes can expose, from the metric objects themselves."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"], "info": ["_info"]}
    names = set()
    for metric in vars(telemetry).values():
        if isinstance(metric, MetricWrapperBase):
            for family in metric.describe():
                names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names | {"process_resident_memory_bytes", "up"}


def run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def prometheus_dir(tmp_path, tiny_model):
    """deploy/prometheus copied next to a targets file written by `vad run`'s code for a small config."""
    folder = tmp_path / "prometheus"
    shutil.copytree(DEPLOY / "prometheus", folder)
    config = tmp_path / "vad.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": str(tiny_model),
                "run_dir": str(tmp_path / "run"),
                "cameras": [{"id": "cam1", "source": 0}, {"id": "cam2", "source": 1}],
                "metrics": {"targets_file": str(folder / "targets" / "vad.json")},
            }
        )
    )
    write_targets(pipeline_config.load(config))
    return folder


@needs_promtool
def test_promtool_accepts_the_config_and_rules_and_the_rules_pass_their_tests(prometheus_dir):
    for command in (
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "rules.yml"),
        ("test", "rules", "rules.test.yml"),
    ):
        result = run(PROMTOOL, *command, cwd=prometheus_dir)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "WARNING" not in result.stdout + result.stderr, result.stdout + result.stderr
    targets = json.loads((prometheus_dir / "targets" / "vad.json").read_text())
    labels = [t["labels"]["process"] for t in targets]
    assert labels == [
        "capture[cam1]",
        "patcher[cam1]",
        "capture[cam2]",
        "patcher[cam2]",
        "scorer[0]",
        "alerter",
        "supervisor",
    ]
    assert [t["targets"] for t in targets] == [[f"127.0.0.1:{9100 + k}"] for k in range(7)]


def test_rules_and_dashboard_use_only_metrics_the_pipeline_exposes():
    exposed = exposed_metric_names()
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "vad.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries.append(dashboard["templating"]["list"][0]["definition"])
    used = {name for expr in expressions + queries for name in METRIC_NAME.findall(expr)}
    assert used - exposed == set()
    for required in (
        "vad_camera_up",
        "vad_frames_dropped_total",
        "vad_capture_to_score_seconds_bucket",
        "vad_frames_scored_total",
        "vad_notify_lag_seconds",
    ):
        assert any(required in e for e in expressions), f"no alert rule uses {required}"
    for required in (
        "vad_frames_captured_total",
        "vad_frames_dropped_total",
        "vad_capture_to_alert_seconds_bucket",
        "vad_frame_score",
        "vad_events_total",
        "vad_notify_lag_seconds",
    ):
        assert any(required in q for q in queries), f"no dashboard panel shows {required}"


def test_the_dashboard_is_wired_to_the_provisioned_datasource():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "vad.json").read_text())
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels and all(p["datasource"]["uid"] == uid for p in panels)
    assert all(t["datasource"]["uid"] == uid for p in panels for t in p["targets"])
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    cells = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in dashboard["panels"]]
    assert len(set(cells)) == len(cells)  # no two panels on the same spot


def test_compose_services_volumes_and_mounts_are_consistent(monkeypatch):
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services, volumes = compose["services"], set(compose["volumes"])
    mounts = {}
    for name, service in services.items():
        assert ":" in service["image"] and not service["image"].endswith(":latest"), f"{name}: pin the image"
        for dependency in service.get("depends_on", []):
            assert dependency in services
        if "network_mode" in service:
            assert service["network_mode"].removeprefix("service:") in services
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        for entry in service.get("volumes", []):
            source, target = entry.split(":")[:2]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in volumes, f"{name}: volume {source} is not declared"
            mounts[(name, target)] = source
    build = services["vad"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    # Prometheus reads the targets `vad run` writes, and the rules its config names, through the mounts.
    monkeypatch.setenv("VAD_RUN_DIR", "/var/lib/vad")  # the image's ENV
    monkeypatch.setenv("VAD_CAMERA_URL", "rtsp://camera/stream")
    cfg = pipeline_config.load(DEPLOY / "config" / "vad.yaml")
    assert mounts[("vad", "/var/lib/vad")] == "vad-data" and mounts[("vad", "/etc/vad/vad.yaml")] == "./config/vad.yaml"
    targets = mounts[("vad", str(Path(cfg.metrics.targets_file).parent))]
    assert mounts[("prometheus", "/etc/prometheus/targets")] == targets
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["file_sd_configs"][0]["files"] == ["targets/*.json"]
    for rule_file in prometheus["rule_files"]:
        assert ("prometheus", f"/etc/prometheus/{rule_file}") in mounts
    assert services["prometheus"]["network_mode"] == "service:vad" and "127.0.0.1:9090:9090" in services["vad"]["ports"]
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://vad:9090"
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "vad.yml").read_text())
    assert ("grafana", provider["providers"][0]["options"]["path"]) in mounts


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_copy_what_exists_and_run_unprivileged(dockerfile):
    text = (DEPLOY / "docker" / dockerfile).read_text()
    ignore = (DEPLOY / "docker" / f"{dockerfile}.dockerignore").read_text().splitlines()
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for line in re.findall(r"^COPY (.+)$", text, re.MULTILINE):
        *sources, _target = line.split()
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile}: COPY {source} does not exist"
            assert source in included, f"{dockerfile}: {source} is left out of the build context by the .dockerignore"
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    installs = re.findall(r"^RUN pip install (.+)$", text, re.MULTILINE)
    assert installs and not any("train" in i or "torch" in i for i in installs)  # the runtime, no PyTorch
    assert "HEALTHCHECK" in text
    config = re.search(r"COPY deploy/config/vad.yaml (\S+)", text).group(1)
    assert re.search(rf'CMD \["vad", "run", "--config", "{config}"\]', text)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize(
    "name, command",
    [
        ("vad.service", "vad run --config /etc/vad/vad.yaml"),
        ("vad-scorer.service", "vad stage scorer --index 0 --config /etc/vad/vad.yaml"),
    ],
)
def test_the_systemd_units_verify(tmp_path, name, command):
    unit = (DEPLOY / "systemd" / name).read_text()
    assert re.search(r"^User=vad$", unit, re.MULTILINE) and re.search(r"^Restart=on-failure$", unit, re.MULTILINE)
    assert name != "vad.service" or re.search(r"^EnvironmentFile=/etc/vad/vad.env$", unit, re.MULTILINE)
    assert f"ExecStart=/opt/vad/bin/{command}" in unit
    # systemd-analyze wants the programs to exist: point them at this checkout's `vad`.
    local = tmp_path / name
    local.write_text(unit.replace("/opt/vad/bin/vad", str(Path(sys.executable).parent / "vad")))
    result = run("systemd-analyze", "verify", str(local))
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_the_kubernetes_manifest_parses_and_its_config_fits_the_schema(tmp_path):
    documents = list(yaml.safe_load_all((DEPLOY / "k8s" / "scorers.yaml").read_text()))
    kinds = {d["kind"]: d for d in documents}
    assert set(kinds) == {"ConfigMap", "Deployment"}
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:3] == ["vad", "stage", "scorer"] and "/etc/vad/vad.yaml" in container["args"]
    config = tmp_path / "vad.yaml"
    config.write_text(kinds["ConfigMap"]["data"]["vad.yaml"])
    cfg = pipeline_config.load(
        config, overrides={"security": {"curve": {"enabled": False}}}
    )  # keys live in the cluster
    assert cfg.scorer.processes >= 1 and cfg.security.allow_remote
