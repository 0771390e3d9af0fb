"""benchmarks/research/run_round.py: a round trained and scored through `vad`, then judged by nested_selection."""

import importlib.util
import json
import sys

import pytest
import yaml

from .conftest import REPO


def research_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "research" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_round_is_trained_scored_and_judged(synthetic_ped2, tiny_config, tiny_model, tmp_path, capsys):
    run_round = research_script("run_round")
    nested = research_script("nested_selection")
    round_file = tmp_path / "round.yaml"
    candidates = [
        {"name": "given", "family": "baseline", "method": "ae", "model": str(tiny_model)},
        {
            "name": "signed",
            "family": "b",
            "method": "ae",
            "base": str(tiny_config),
            "overrides": {"patches": {"motion": "flowbins", "flow_signed": True}, "autoencoder": {"epochs": 2}},
        },
        {"name": "broken", "method": "ae", "base": str(tiny_config), "overrides": {"patches": {"motion": "optical"}}},
        {"name": "after_broken", "method": "ae", "base": str(tiny_config), "after": "broken"},
    ]
    round_file.write_text(yaml.safe_dump({"candidates": candidates}))
    runs = tmp_path / "runs"
    data = ["--data", str(synthetic_ped2), "--runs", str(runs)]
    assert run_round.main([str(round_file), *data]) == 1  # one candidate fails, the one after it never starts
    printed = capsys.readouterr()
    assert "failed or skipped: broken, after_broken" in printed.err
    assert not (runs / "after_broken").exists()
    config = yaml.safe_load((runs / "signed" / "config.yaml").read_text())
    assert config["patches"]["flow_signed"] and config["out"] == str(runs / "signed" / "model")
    assert json.loads((runs / "signed" / "report.json").read_text())["frames_scored"] == 40
    assert not (runs / "given" / "config.yaml").exists()  # scored as given, not trained

    round_file.write_text(yaml.safe_dump({"candidates": candidates[:2]}))
    assert run_round.main([str(round_file), *data]) == 0
    assert "0 of 2 candidates to train and score" in capsys.readouterr().out  # both reports exist already
    assert nested.main(["--round", str(round_file), "--runs", str(runs)]) == 0
    assert "nested leave-one-clip-out over 2 candidates" in capsys.readouterr().out
