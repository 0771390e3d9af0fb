import pytest

from streamer import config
from training.config import TrainConfig
from training.train import build_spec


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_valid_training_config(tmp_path):
    cfg = config.load(write(tmp_path, "method: nre\nnre: {lambdas: [0.6, 0.2, 0.2]}\n"), TrainConfig)
    assert cfg.nre.lambdas == (0.6, 0.2, 0.2) and cfg.patches.motion == "flow"


def test_patch_settings_are_checked_with_the_config_and_frame_size_is_optional(tmp_path):
    with pytest.raises(config.ConfigError, match="patches: patch size must be >= 2"):
        config.load(write(tmp_path, "method: ae\npatches: {size: 1}\n"), TrainConfig)
    resized = config.load(write(tmp_path, "method: ae\npatches: {frame_size: [120, 180]}\n"), TrainConfig)
    assert resized.patches.frame_size == (120, 180)
    assert build_spec(resized, None).frame_size == (120, 180)  # configured: the training frames are not read


def test_every_problem_is_listed_with_its_path(tmp_path):
    text = """
method: nre
colour: red
autoencoder: {epochs: ten, widths: [1, 2]}
patches: {motion: optical}
export: {scoring: {window: 0}}
"""
    with pytest.raises(config.ConfigError) as e:
        config.load(write(tmp_path, text), TrainConfig)
    problems = "\n".join(e.value.problems)
    assert "colour: unknown setting" in problems
    assert "autoencoder.epochs: expected an integer" in problems
    assert "autoencoder.widths: expected 3 items" in problems
    assert "patches.motion: must be one of" in problems
    assert "export.scoring: top_k and window must be >= 1" in problems
    assert len(e.value.problems) == 5


def test_required_and_malformed(tmp_path):
    with pytest.raises(config.ConfigError, match="method: required"):
        config.load(write(tmp_path, "seed: 1\n"), TrainConfig)
    with pytest.raises(config.ConfigError, match="invalid YAML"):
        config.load(write(tmp_path, "method: [nre\n"), TrainConfig)
    with pytest.raises(config.ConfigError, match="top level must be a mapping"):
        config.load(write(tmp_path, "- a\n- b\n"), TrainConfig)
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.yaml", TrainConfig)


def test_env_interpolation(tmp_path, monkeypatch):
    monkeypatch.setenv("VAD_TEST_OUT", "/tmp/out-x")
    monkeypatch.delenv("VAD_TEST_UNSET", raising=False)
    cfg = config.load(
        write(tmp_path, "method: ae\nout: ${VAD_TEST_OUT}/m\ndata: {root: '${VAD_TEST_UNSET:-/data}'}\n"), TrainConfig
    )
    assert cfg.out == "/tmp/out-x/m" and cfg.data.root == "/data"
    with pytest.raises(config.ConfigError, match=r"out: environment variable \$\{VAD_TEST_UNSET\} is not set"):
        config.load(write(tmp_path, "method: ae\nout: ${VAD_TEST_UNSET}\n"), TrainConfig)


def test_overrides_merge(tmp_path):
    cfg = config.load(
        write(tmp_path, "method: ae\ndata: {static_fraction: 0.2}\n"), TrainConfig, {"data": {"root": "/x"}}
    )
    assert cfg.data.root == "/x" and cfg.data.static_fraction == 0.2


def test_shipped_configs_are_valid():
    from .conftest import REPO

    for path in sorted((REPO / "configs").glob("*_ped2.yaml")):
        assert path.name.startswith(config.load(path, TrainConfig).method + "_")
    own = config.load(REPO / "configs" / "own_camera.yaml", TrainConfig)
    assert own.data.sources == [] and own.data.validation_share > 0 and not own.data.validation_clips


def test_count_bands_must_not_be_negative(tmp_path):
    with pytest.raises(config.ConfigError, match="count_bands must be >= 0"):
        config.load(write(tmp_path, "method: ae\nexport: {count_bands: -1}\n"), TrainConfig)
    assert config.load(write(tmp_path, "method: ae\nexport: {count_bands: 5}\n"), TrainConfig).export.count_bands == 5
