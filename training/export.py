"""Export a trained scoring module to ONNX, check parity, calibrate on the training footage, write the card.

Calibration, gate and threshold are fitted on the normal training footage only (training/calibration.py).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from streamer.footage import Clip
from streamer.model import ModelCard, create_session, session_scores, sha256_of
from streamer.patches import PatchSpec, to_model_input
from streamer.scoring import ScoringSettings

from .calibration import calibrate, calibration_record, collect
from .loops import as_float
from .provenance import git_commit, now

log = logging.getLogger(__name__)

OPSET = 17


class ExportError(RuntimeError):
    pass


def export_onnx(module: torch.nn.Module, path: str | os.PathLike, spec: PatchSpec, output: str = "scores") -> None:
    """Write a graph of patches [N, C, S, S] float32 (scores [N], or latents [N, L]) with a dynamic batch axis."""
    import onnx

    module.eval()
    example = torch.rand(2, spec.channels, spec.size, spec.size)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, but needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["patches"],
            output_names=[output],
            dynamic_axes={"patches": {0: "batch"}, output: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)))


@torch.no_grad()
def torch_scores(module: torch.nn.Module, patches: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    module.eval()
    return np.concatenate(
        [module(as_float(patches[i : i + batch_size])).numpy() for i in range(0, len(patches), batch_size)]
    )


def check_parity(module: torch.nn.Module, session, patches: np.ndarray, tolerance: float = 1e-5) -> dict:
    """Max abs difference between PyTorch and onnxruntime scores on real patches; ExportError past tolerance."""
    reference = torch_scores(module, patches)
    exported = session_scores(session, patches)
    diff = float(np.max(np.abs(reference - exported)))
    bound = tolerance * max(1.0, float(np.max(np.abs(reference))))
    log.info("ONNX parity on %d patches: max abs diff %.3g (tolerance %.3g)", len(patches), diff, bound)
    if not diff <= bound:
        raise ExportError(f"ONNX scores differ from PyTorch by {diff:.3g} (> {bound:.3g}) on real patches")
    return {"patches": int(len(patches)), "max_abs_diff": diff, "tolerance": bound}


def export_encoder(encoder: torch.nn.Module, path: Path, spec: PatchSpec, patches: np.ndarray) -> dict:
    """Write the patches -> latents graph next to the model and check it against PyTorch; its card entry."""
    export_onnx(encoder, path, spec, output="latents")
    session, _ = create_session(path, device="cpu")
    with torch.no_grad():
        encoder.eval()
        reference = encoder(as_float(patches)).numpy()
    exported = session.run(None, {session.get_inputs()[0].name: to_model_input(patches)})[0]
    diff = float(np.max(np.abs(reference - exported)))
    bound = 1e-5 * max(1.0, float(np.max(np.abs(reference))))
    if not diff <= bound:
        raise ExportError(f"ONNX encoder latents differ from PyTorch by {diff:.3g} (> {bound:.3g})")
    return {"file": path.name, "sha256": sha256_of(path), "latent": int(reference.shape[1]), "max_abs_diff": diff}


def export_model(
    module: torch.nn.Module,
    out_path: str | os.PathLike,
    *,
    method: str,
    spec: PatchSpec,
    footage: list[Clip],
    sample_patches: np.ndarray,
    settings: ScoringSettings,
    training: dict,
    calibration_mode: str = "position",
    calibration_quantile: float = 0.99,
    threshold_quantile: float = 0.99,
    gate_max_hidden: float | None = None,
    count_bands: int = 0,
    calibration_frames: int = 20_000,
    frames_per_clip: int | None = None,
    parity_patches: int = 4096,
    score_description: str = "mean squared reconstruction error per patch",
    encoder: torch.nn.Module | None = None,
    seed: int = 0,
    progress: bool = True,
) -> ModelCard:
    """Write OUT.onnx and OUT.json (and OUT.encoder.onnx, patches -> latents, given an encoder); return the card.

    Parity is checked on `sample_patches` (training patches); calibration reads `footage` again, every frame
    (each clip's first `frames_per_clip`), and keeps at most `calibration_frames` of them.
    """
    out_path = Path(out_path).with_suffix(".onnx")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(module, out_path, spec)
    session, _ = create_session(out_path, device="cpu")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(sample_patches), size=min(parity_patches, len(sample_patches)), replace=False))
    parity = check_parity(module, session, sample_patches[pick])
    encoder_entry = None
    if encoder is not None:
        encoder_entry = export_encoder(encoder, out_path.with_suffix(".encoder.onnx"), spec, sample_patches[pick])
    sample = collect(  # the exported graph's own scores
        footage,
        spec,
        lambda p: session_scores(session, p),
        settings,
        calibration_frames,
        seed,
        frames_per_clip,
        progress,
    )
    result = calibrate(
        sample, settings, calibration_mode, calibration_quantile, threshold_quantile, gate_max_hidden, count_bands
    )
    settings = ScoringSettings.from_dict({**settings.to_dict(), "threshold": result.threshold})
    card = ModelCard(
        method=method,
        patch=spec,
        calibration=result.calibration,
        scoring=settings,
        onnx_sha256=sha256_of(out_path),
        score_description=score_description,
        score_percentiles=result.percentiles,
        gate=result.gate,
        count_bands=result.count_bands,
        training_moving_max=result.training_moving_max,
        threshold_rule=result.rule,
        training=training,
        calibrated_on=calibration_record(training.get("footage", []), sample, result),
        parity=parity,
        commit=git_commit(),
        created=now(),
        encoder=encoder_entry,
    )
    card.save(out_path.with_suffix(".json"))
    log.info("wrote %s and its card", out_path)
    return card
