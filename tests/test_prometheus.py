"""A real Prometheus scraping a running pipeline with the shipped scrape config and alert rules.

Prometheus (Debian's `prometheus` package, which .ci/run installs) runs on a free
loopback port with its own data folder and deploy/prometheus/prometheus.yml and
rules.yml, the scrape and rule intervals shortened to 1 s so the test is quick. It
must find every process of `vad run` through the targets file the supervisor
writes, see them up, see the frame counters grow, evaluate every alert rule
without error, get data for every dashboard query (every labelled counter is
there at 0 from its process's start, so even the ones that have not counted
anything yet show), and `promtool check metrics` must accept what each process
exposes (without `_created` series).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request

import pytest
import yaml

from streamer.pipeline import config as pipeline_config
from streamer.pipeline.config import free_port_base

from .conftest import REPO
from .notify_helpers import Receiver
from .pipeline_helpers import running, short_dir, wait_for, write_config

PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="prometheus/promtool not installed (Debian: apt-get install prometheus; .ci/run does)",
)


def api(port: int, path: str, **params) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    body = json.loads(urllib.request.urlopen(url, timeout=5).read())
    assert body["status"] == "success", body
    return body["data"]


def query(port: int, expr: str) -> list[dict]:
    return api(port, "query", query=expr)["result"]


def total(port: int, expr: str) -> float:
    result = query(port, f"sum({expr})")
    return float(result[0]["value"][1]) if result else 0.0


def dashboard_queries() -> list[str]:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "vad.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return [q.replace("$camera", ".*").replace("$__rate_interval", "1m") for q in queries]


@pytest.fixture(scope="module")
def scraped(tiny_model, synthetic_ped2):
    """`vad run` on a looping clip, with a notifier (a webhook), and Prometheus scraping it with the shipped config."""
    receiver = Receiver()
    with short_dir() as run_dir:
        folder = run_dir / "prometheus"
        (folder / "targets").mkdir(parents=True)  # as the compose volume or a host's folder: there before vad run
        shipped = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
        shipped["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
        (folder / "prometheus.yml").write_text(yaml.safe_dump(shipped))
        shutil.copy(REPO / "deploy" / "prometheus" / "rules.yml", folder / "rules.yml")
        camera = {"id": "cam1", "source": str(synthetic_ped2 / "Test" / "Test001"), "pace": True, "fps": 25}
        camera["loop"] = True
        config = write_config(
            run_dir,
            tiny_model,
            [camera],
            metrics={"base_port": free_port_base(6), "targets_file": str(folder / "targets" / "vad.json")},
            notify={"webhooks": [{"url": receiver.url, "name": "ops"}]},
        )
        cfg = pipeline_config.load(config)
        port = free_port_base(1)
        prometheus = [
            PROMETHEUS,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={run_dir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with running("run", "--config", str(config), log=run_dir / "log"):
            with open(run_dir / "prometheus.log", "w") as log:
                server = subprocess.Popen(prometheus, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_for(lambda: _ready(port), 30, "Prometheus to answer")
                yield {"port": port, "cfg": cfg}
            except BaseException:
                print((run_dir / "prometheus.log").read_text()[-4000:])
                raise
            finally:
                server.terminate()
                server.wait(30)
                receiver.close()


def _ready(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2).status == 200
    except OSError:
        return False


def test_prometheus_finds_every_process_up_and_sees_frames_counted(scraped):
    port, cfg = scraped["port"], scraped["cfg"]
    expected = {ref.label for ref in pipeline_config.stage_refs(cfg)} | {"supervisor"}

    def all_up():
        targets = api(port, "targets")["activeTargets"]
        return {t["labels"]["process"] for t in targets if t["health"] == "up"} == expected and targets

    targets = wait_for(all_up, 60, "every process's target up")
    assert {t["labels"]["job"] for t in targets} == {"vad"} and len(targets) == len(expected)
    assert {s["metric"]["process"] for s in query(port, 'up{job="vad"} == 1')} == expected

    first = wait_for(lambda: total(port, "vad_frames_scored_total"), 60, "frames scored in Prometheus")
    captured = total(port, "vad_frames_captured_total")
    wait_for(lambda: total(port, "vad_frames_scored_total") > first, 30, "the scored-frames counter to grow")
    wait_for(lambda: total(port, "vad_frames_captured_total") > captured, 30, "the captured-frames counter to grow")


def test_every_rule_and_dashboard_query_evaluates(scraped):
    port = scraped["port"]
    wait_for(lambda: total(port, "vad_capture_to_alert_seconds_count") >= 10, 60, "a few frames through")
    groups = wait_for(lambda: api(port, "rules")["groups"], 30, "the rules to be loaded")
    rules = [rule for group in groups for rule in group["rules"]]
    written = yaml.safe_load((REPO / "deploy" / "prometheus" / "rules.yml").read_text())["groups"]
    assert [r["name"] for r in rules] == [r["alert"] for g in written for r in g["rules"]]
    assert all(rule["health"] in ("ok", "unknown") for rule in rules), rules
    wait_for(
        lambda: all(r["health"] == "ok" for g in api(port, "rules")["groups"] for r in g["rules"]), 30, "rules run"
    )
    firing = [a for a in api(port, "alerts")["alerts"] if a["state"] == "firing"]
    assert firing == []  # a healthy pipeline raises no alert
    for shown in dashboard_queries():
        wait_for(lambda: query(port, shown), 30, f"data for the panel query {shown}")
    # Counters that have counted nothing yet are there, at 0: increase() will see their first step.
    for name, labels in (
        ("vad_stage_restarts_total", {"stage": "capture", "camera": "cam1"}),
        ("vad_messages_rejected_total", {"stage": "alerter", "reason": "foreign_stream"}),
        ("vad_frames_dropped_total", {"camera": "cam1", "reason": "lost"}),
        ("vad_camera_reconnects_total", {"camera": "cam1"}),
        ("vad_frames_busier_than_training_total", {"camera": "cam1"}),
    ):
        selector = ", ".join(f'{k}="{v}"' for k, v in labels.items())
        assert [float(s["value"][1]) for s in query(port, f"{name}{{{selector}}}")] == [0.0], (name, labels)


def test_promtool_accepts_every_process_exposition(scraped):
    targets = api(scraped["port"], "targets")["activeTargets"]
    assert targets
    for target in targets:
        text = urllib.request.urlopen(target["scrapeUrl"], timeout=5).read()
        result = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=60)
        assert result.returncode == 0 and not result.stdout.strip(), (target["labels"], result.stdout, result.stderr)
        assert b"_created" not in text, target["labels"]
