"""Export a trained scoring module to ONNX, check parity, calibrate on training data, write the card.

Everything the card holds is fitted on normal training clips only:
  calibration  per-position median and high quantile of raw patch scores
  gate         (optional) the motion level below which patches are left out
  count bands  (optional) frame-score median and spread per band of the gate-passing patch count
  threshold    a quantile of smoothed training frame scores (a false-alarm rate on normal video)
"""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streamer.model import ModelCard, create_session, session_scores, sha256_of
from streamer.patches import PatchSpec, to_model_input
from streamer.scoring import Calibration, CountBands, ScoringSettings, aggregate, passes_gate, smooth_series

from .data import ClipPatches
from .loops import as_float

log = logging.getLogger(__name__)

OPSET = 17
# With export weights: float16, tensors smaller than this (most biases, the centroids) stay float32: they weigh little.
FLOAT16_MIN_ELEMENTS = 1024


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


def store_weights_as_float16(path: str | os.PathLike, prefix: str = "") -> int:
    """Rewrite an ONNX graph so that its large float32 weights are stored as float16, each cast back to float32
    inside the graph; returns how many. The file shrinks by about half; onnxruntime folds the casts when it
    loads the graph, so scoring still runs in float32, on weights rounded to float16. Only weights whose name
    starts with `prefix` are stored so."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inputs = {i.name for i in graph.input}
    casts = []
    for tensor in list(graph.initializer):
        if (
            tensor.data_type != TensorProto.FLOAT
            or np.prod(tensor.dims) < FLOAT16_MIN_ELEMENTS
            or tensor.name in inputs
            or not tensor.name.startswith(prefix)
        ):
            continue
        weights = numpy_helper.to_array(tensor)
        half = weights.astype(np.float16)
        if not np.all(np.isfinite(half)):
            raise ExportError(f"weight {tensor.name} does not fit float16 (|w| up to {np.abs(weights).max():.3g})")
        graph.initializer.remove(tensor)
        graph.initializer.append(numpy_helper.from_array(half, f"{tensor.name}.float16"))
        casts.append(helper.make_node("Cast", [f"{tensor.name}.float16"], [tensor.name], to=TensorProto.FLOAT))
    nodes = casts + list(graph.node)  # the casts first: a graph's nodes are in topological order
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return len(casts)


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


def export_encoder(
    encoder: torch.nn.Module,
    path: Path,
    spec: PatchSpec,
    patches: np.ndarray,
    threads: int = 0,
    weights: str = "float32",
    float16_tolerance: float = 0.01,
) -> dict:
    """Write the patches -> latents graph next to the model and check it against PyTorch; its card entry.

    With float16 weights the latents may differ by `float16_tolerance` of the largest latent magnitude.
    """
    export_onnx(encoder, path, spec, output="latents")
    if weights == "float16":
        store_weights_as_float16(path)
    session, _ = create_session(path, device="cpu", threads=threads)
    with torch.no_grad():
        encoder.eval()
        reference = encoder(as_float(patches)).numpy()
    exported = session.run(None, {session.get_inputs()[0].name: to_model_input(patches)})[0]
    diff = float(np.max(np.abs(reference - exported)))
    bound = (float16_tolerance if weights == "float16" else 1e-5) * max(1.0, float(np.max(np.abs(reference))))
    if not diff <= bound:
        raise ExportError(f"ONNX encoder latents differ from PyTorch by {diff:.3g} (> {bound:.3g})")
    return {
        "file": path.name,
        "sha256": sha256_of(path),
        "latent": int(reference.shape[1]),
        "weights": weights,
        "max_abs_diff": diff,
    }


def halve_weights(path: Path, session, patches: np.ndarray, quantile: float, tolerance: float, threads: int = 0):
    """Store the graph's weights as float16 and check its scores on real patches against the float32 graph's.

    The bound is `tolerance` of the spread of normal scores (median to the calibration quantile, the
    scale calibration divides by), so in calibrated units, whatever the method's raw scale; thresholds
    are about 2 of those units. Returns the float16 graph's session and the card's parity entry.
    """
    full = session_scores(session, patches)
    stored = store_weights_as_float16(path)
    session, _ = create_session(path, device="cpu", threads=threads)
    diff = float(np.max(np.abs(session_scores(session, patches) - full)))
    spread = float(np.quantile(full, quantile) - np.median(full))
    log.info(
        "float16 weights (%d tensors): max abs score diff %.3g, %.2g of the score spread", stored, diff, diff / spread
    )
    if not diff <= tolerance * spread:
        raise ExportError(
            f"float16 weights move patch scores by up to {diff:.3g}, more than {tolerance:g} of the normal score "
            f"spread {spread:.3g}: export with weights: float32"
        )
    return session, {
        "tensors": stored,
        "patches": int(len(patches)),
        "max_abs_diff": diff,
        "score_spread": spread,
        "max_calibrated_diff": diff / spread,
        "tolerance": tolerance,
    }


def fit_gate(energy: np.ndarray, calibrated: np.ndarray, max_hidden: float) -> dict:
    """The highest motion threshold that hides at most `max_hidden` of the unusual training patches.

    Unusual = calibrated score above 1, the top of normal. Below the threshold a
    patch skips the network: it is confidently normal.
    """
    unusual = calibrated > 1.0
    candidates = np.arange(0.0, 64.01, 0.25)  # motion energy is on a 0-255 scale
    hidden = np.array([(unusual & (energy < t)).sum() for t in candidates]) / max(unusual.sum(), 1)
    threshold = float(candidates[hidden <= max_hidden].max())
    passed = float((energy >= threshold).mean())
    log.info("gate: motion threshold %.2f passes %.1f%% of training patches", threshold, 100 * passed)
    return {
        "motion_threshold": threshold,
        "max_hidden": max_hidden,
        "training_pass_rate": passed,
        "rule": f"highest motion level hiding <= {max_hidden:.0%} of the training patches "
        "scoring above the calibration quantile",
    }


def aggregated_frame_scores(
    calibrated: np.ndarray, energy: np.ndarray, gate: dict | None, settings: ScoringSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Frame scores of (F, P) calibrated patch scores before count bands, and each frame's gate-passing count.

    Gated-out patches count 0, as live.
    """
    active = passes_gate(energy, gate)
    calibrated = np.where(active, calibrated, 0.0)
    return np.array([aggregate(z, settings) for z in calibrated]), active.sum(axis=1)


@dataclass
class CalibrationResult:
    calibration: Calibration
    gate: dict | None
    count_bands: CountBands | None
    training_moving_max: int  # most gate-passing patches in any training frame
    threshold: float
    percentiles: dict
    rule: str


def calibrate(
    raw: np.ndarray,
    data: ClipPatches,
    settings: ScoringSettings,
    mode: str = "position",
    quantile: float = 0.99,
    threshold_quantile: float = 0.99,
    gate_max_hidden: float | None = None,
    count_bands: int = 0,
) -> CalibrationResult:
    """Fit calibration, gate, count bands (if `count_bands` > 0) and threshold on normal clips: raw (F, P) scores."""
    calibration = Calibration.fit(raw, mode, quantile)
    calibrated = calibration.apply(raw)
    energy = data.energy.reshape(data.frames, data.positions)
    gate = None if gate_max_hidden is None else fit_gate(energy.ravel(), calibrated.ravel(), gate_max_hidden)
    scores, counts = aggregated_frame_scores(calibrated, energy, gate, settings)
    bands = CountBands.fit(scores, counts, count_bands, quantile) if count_bands else None
    if bands is not None:
        scores = np.array([bands.apply(score, count) for score, count in zip(scores, counts)])
        log.info("count bands: edges %s (gate-passing patches per frame)", [f"{e:g}" for e in bands.edges])
    clip_of_frame = data.clip_of_frame
    smoothed = np.concatenate([smooth_series(scores[clip_of_frame == c], settings) for c in np.unique(clip_of_frame)])
    threshold = float(np.quantile(smoothed, threshold_quantile))
    percentiles = {f"p{q:g}": float(np.quantile(raw, q / 100)) for q in (50, 90, 99, 99.9)}
    rule = (
        f"{threshold_quantile:.1%} quantile of smoothed frame scores on {data.frames} normal training frames "
        f"({1 - threshold_quantile:.1%} of them pass it; normal video the model has not seen passes more often: "
        "the cross-validated proxy measures how much, README)"
    )
    log.info("threshold %.3f: %s", threshold, rule)
    return CalibrationResult(calibration, gate, bands, int(counts.max()), threshold, percentiles, rule)


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def export_model(
    module: torch.nn.Module,
    out_path: str | os.PathLike,
    *,
    method: str,
    spec: PatchSpec,
    calibration_data: ClipPatches,
    settings: ScoringSettings,
    training: dict,
    calibration_mode: str = "position",
    calibration_quantile: float = 0.99,
    threshold_quantile: float = 0.99,
    gate_max_hidden: float | None = None,
    count_bands: int = 0,
    parity_patches: int = 4096,
    parity_tolerance: float = 1e-5,
    score_description: str = "mean squared reconstruction error per patch",
    encoder: torch.nn.Module | None = None,
    seed: int = 0,
    threads: int = 0,
    weights: str = "float32",
    float16_tolerance: float = 0.01,
) -> ModelCard:
    """Write OUT.onnx and OUT.json (and OUT.encoder.onnx, patches -> latents, given an encoder); return the card.

    weights "float16" stores the graphs' weights at half the size (`halve_weights`).
    """
    out_path = Path(out_path).with_suffix(".onnx")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(module, out_path, spec)
    session, _ = create_session(out_path, device="cpu", threads=threads)
    rng = np.random.default_rng(seed)
    pick = rng.choice(
        len(calibration_data.patches), size=min(parity_patches, len(calibration_data.patches)), replace=False
    )
    patches = calibration_data.patches[np.sort(pick)]
    parity = check_parity(module, session, patches, parity_tolerance)
    if weights == "float16":
        session, parity["float16"] = halve_weights(
            out_path, session, patches, calibration_quantile, float16_tolerance, threads
        )
    encoder_entry = None
    if encoder is not None:
        encoder_path = out_path.with_suffix(".encoder.onnx")
        encoder_entry = export_encoder(encoder, encoder_path, spec, patches, threads, weights, float16_tolerance)
    data = calibration_data
    raw = session_scores(session, data.patches).reshape(data.frames, data.positions)  # the exported graph's own scores
    result = calibrate(
        raw, data, settings, calibration_mode, calibration_quantile, threshold_quantile, gate_max_hidden, count_bands
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
        parity=parity,
        commit=git_commit(),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        encoder=encoder_entry,
    )
    card.save(out_path.with_suffix(".json"))
    log.info("wrote %s and its card", out_path)
    return card
