"""benchmarks/gpu_check.py: every step on the CPU with --cpu-only, on a few frames, so the GPU check cannot rot;
and its loud failure where CUDA cannot run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from streamer.model import BUNDLED_MODEL, nvidia_driver_present

from .conftest import REPO

BUNDLED = {p.stem for p in BUNDLED_MODEL.parent.glob("*.onnx") if not p.name.endswith(".encoder.onnx")}


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cpu_only_runs_every_step(synthetic_ped2, tmp_path):
    out = tmp_path / "check.json"
    done = gpu_check(
        "--cpu-only",
        "--data",
        str(synthetic_ped2),
        "--frames",
        "3",
        "--batch-sizes",
        "16",
        "48",
        "--seconds",
        "0.05",
        "--cameras",
        "1",
        "2",
        "--camera-frames",
        "4",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["environment"]["device"] == "cpu" and report["passed"]
    assert {row["model"] for row in report["provider"]} == BUNDLED
    assert all(row["provider"] == "CPUExecutionProvider" and row["nodes"] for row in report["provider"])
    for row in report["agreement"]:
        assert row["frames"] == 3 and row["passed"] and row["calibrated"] <= 0.01
    assert sorted((row["model"], row["batch"]) for row in report["speed"]) == sorted(
        (model, batch) for model in BUNDLED for batch in (16, 48)
    )
    assert all(row["run"] > 0 and row["iobinding"] > 0 for row in report["speed"])
    assert {row["model"] for row in report["live_calls"]} == BUNDLED
    assert [(row["cameras"], row["frames"]) for row in report["end_to_end"]] == [(1, 4), (2, 8)]
    assert all(row["fps"] > 0 for row in report["end_to_end"])
    assert "| end-to-end | 2 camera(s) |" in done.stdout  # the table is printed too


@pytest.mark.skipif(nvidia_driver_present(), reason="an NVIDIA driver is present: CUDA may well start here")
def test_without_a_gpu_it_fails_loudly(synthetic_ped2, tmp_path):
    out = tmp_path / "check.json"
    done = gpu_check("--data", str(synthetic_ped2), "--frames", "2", "--out", str(out))
    assert done.returncode == 2
    assert "GPU CHECK FAILED" in done.stderr and "CUDA" in done.stderr
    assert "CUDA" in json.loads(out.read_text())["failure"]  # the JSON says so as well
