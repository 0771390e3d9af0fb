"""benchmarks/method_seeds.py: runs per config and seed, resumable, the median seed, DEC refining its seed's SDAE."""

import importlib.util
import json
import logging
import sys

import pytest

from .conftest import REPO


def load_script():
    spec = importlib.util.spec_from_file_location("method_seeds", REPO / "benchmarks" / "method_seeds.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_seeds_are_trained_scored_summarised_and_the_median_bundled(
    synthetic_ped2, tiny_config, tmp_path, capsys, caplog
):
    caplog.set_level(logging.INFO, logger="method_seeds")
    seeds = load_script()
    out, bundled = tmp_path / "seeds", tmp_path / "bundle"
    args = [str(tiny_config), "--seeds", "0", "1", "2", "--data", str(synthetic_ped2), "--out", str(out)]
    assert seeds.main([*args, "--bundle", str(bundled)]) == 0
    printed = capsys.readouterr().out
    running = 0
    for record in caplog.records:  # one run at a time (--jobs 1)
        running += record.getMessage().startswith("start ") - record.getMessage().startswith("done ")
        assert running <= 1
    entry = json.loads((out / "summary.json").read_text())["tiny"]
    assert entry["seeds"] == [0, 1, 2] and entry["threads"] == [1]
    runs = {r["seed"]: r for r in entry["runs"]}
    eers = sorted(r["eer"] for r in runs.values())
    assert runs[entry["median_seed"]]["eer"] == eers[1]
    assert entry["figures"]["eer"]["min"] == eers[0] and entry["figures"]["eer"]["max"] == eers[2]
    assert len({r["onnx_sha256"] for r in runs.values()}) == 3  # three seeds, three networks
    for seed, run in runs.items():
        report = json.loads((out / "tiny" / f"seed{seed}" / "eval" / "report.json").read_text())
        assert run["report"].endswith("report.json") and len(report["frames"]) == 40
        assert run["recall"] == report["at_threshold"]["recall"]
    assert "mean ± sample standard deviation (min–max)" in printed and f"median seed {entry['median_seed']}" in printed
    eer = {k: 100 * v for k, v in entry["figures"]["eer"].items()}
    row = f"| tiny | 3 | {eer['mean']:.2f} ± {eer['sd']:.2f} % ({eer['min']:.2f}–{eer['max']:.2f}) |"
    assert row in (out / "summary.md").read_text()
    card = json.loads((bundled / "tiny.json").read_text())
    assert card["training"]["seed"] == entry["median_seed"] and (bundled / card["encoder"]["file"]).is_file()
    assert card["onnx_sha256"] == runs[entry["median_seed"]]["onnx_sha256"]

    model = out / "tiny" / "seed0" / "tiny.onnx"
    before = model.stat().st_mtime_ns
    assert seeds.main(args) == 0  # finished runs are skipped, not trained again
    assert model.stat().st_mtime_ns == before
    assert json.loads((out / "summary.json").read_text())["tiny"]["median_seed"] == entry["median_seed"]


def write(path, text):
    path.write_text(text)
    return path


def test_dec_refines_the_sdae_of_its_own_seed(tmp_path):
    seeds = load_script()
    sdae = write(tmp_path / "base.yaml", f"method: sdae_kmeans\nout: {tmp_path}/b/base\n")
    dec = write(tmp_path / "refined.yaml", f"method: dec\nsdae: {{checkpoint: {tmp_path}/b/base.sdae.npz}}\n")
    runs = seeds.plan([dec, sdae], [0, 1], 1, tmp_path / "out")
    assert [r.label for r in runs] == ["base seed 0", "base seed 1", "refined seed 0", "refined seed 1"]
    for run in runs[2:]:
        assert run.after is runs[run.seed]
        assert run.config["sdae"]["checkpoint"] == str(tmp_path / "out" / "base" / f"seed{run.seed}" / "base.sdae.npz")
        assert (run.config["seed"], run.config["threads"]) == (run.seed, 1)
    with pytest.raises(SystemExit, match="no given config trains and which does not exist"):
        seeds.plan([dec], [0], 1, tmp_path / "out")


def test_median_seed_and_a_folder_of_another_config(synthetic_ped2, tmp_path):
    seeds = load_script()
    rows = [{"seed": s, "eer": e} for s, e in [(0, 0.2), (1, 0.1), (2, 0.4), (3, 0.3)]]
    assert seeds.median_seed(rows)["seed"] == 0  # even count: the lower middle one
    assert seeds.median_seed(rows[:3])["seed"] == 0
    cfg = {"method": "ae", "seed": 0, "out": str(tmp_path / "x" / "x"), "data": {"validation_clips": ["Train003"]}}
    run = seeds.Run("x", "ae", 0, tmp_path / "x", cfg)
    seeds.prepare(run, str(synthetic_ped2))
    run.config["seed"] = 5
    with pytest.raises(seeds.RunFolderError, match="holds a run of another config"):
        seeds.prepare(run, str(synthetic_ped2))
    (run.folder / "result.json").write_text("{}")
    with pytest.raises(seeds.RunFolderError):  # nor is a finished run of another config taken as this one's
        seeds.finished(run)
