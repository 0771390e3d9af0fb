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


def halve_weights(
    path: Path,
    session,
    patches: np.ndarray,
    quantile: float,
    tolerance: float,
    threads: int = 0,
    prefix: str = "",
    spread: float | None = None,
):
    """Store the graph's weights as float16 and check its scores on real patches against the float32 graph's.

    The bound is `tolerance` of the spread of normal scores (median to the calibration quantile, the
    scale calibration divides by), so in calibrated units, whatever the method's raw scale; thresholds
    are about 2 of those units. `spread`: that scale where a card already has it, else measured on
    `patches`; `prefix`: as `store_weights_as_float16`. Returns the float16 graph's session and the
    card's parity entry.
    """
    full = session_scores(session, patches)
    stored = store_weights_as_float16(path, prefix)
    session, _ = create_session(path, device="cpu", threads=threads)
    diff = float(np.max(np.abs(session_scores(session, patches) - full)))
    if spread is None:
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
    parity_tolerance: float = 1e-5,
    score_description: str = "mean squared reconstruction error per patch",
    encoder: torch.nn.Module | None = None,
    seed: int = 0,
    progress: bool = True,
    threads: int = 0,
    weights: str = "float32",
    float16_tolerance: float = 0.01,
) -> ModelCard:
    """Write OUT.onnx and OUT.json (and OUT.encoder.onnx, patches -> latents, given an encoder); return the card.

    Parity is checked on `sample_patches` (training patches); calibration reads `footage` again, every frame
    (each clip's first `frames_per_clip`), and keeps at most `calibration_frames` of them. weights "float16"
    stores the graphs' weights at half the size (`halve_weights`).
    """
    out_path = Path(out_path).with_suffix(".onnx")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(module, out_path, spec)
    session, _ = create_session(out_path, device="cpu", threads=threads)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(sample_patches), size=min(parity_patches, len(sample_patches)), replace=False))
    patches = sample_patches[pick]
    parity = check_parity(module, session, patches, parity_tolerance)
    if weights == "float16":
        session, parity["float16"] = halve_weights(
            out_path, session, patches, calibration_quantile, float16_tolerance, threads
        )
    encoder_entry = None
    if encoder is not None:
        encoder_path = out_path.with_suffix(".encoder.onnx")
        encoder_entry = export_encoder(encoder, encoder_path, spec, patches, threads, weights, float16_tolerance)
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
