"""What each method reaches on the generated scene (docs/own-camera.md): the own-camera path, once per method.

    python benchmarks/scene_methods.py --out runs/scene_methods

Generates the scene (`vad scene`, seed 0, unless --out already holds it),
then for each method: `vad train METHOD --config configs/own_camera.yaml
--source scene/train`, `vad calibrate` on scene/calibrate (the other day the
test clips show), and `vad eval clips` on all four test clips together and on
each alone. Prints per method the causal pooled EER and AUC over all test
frames, the AUC on each kind of anomaly (each clip holds normal frames too),
and the share of the test clips' normal frames whose smoothed score passes the
calibrated threshold (false alarms at the operating point).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KINDS = ("fast", "cart", "against", "left_object")


def vad(*args: str) -> None:
    command = [sys.executable, "-m", "streamer.cli", "--log-level", "warning", *args]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/scene_methods"))
    parser.add_argument("--methods", nargs="+", default=["ae", "nre", "sdae_kmeans", "dec", "ics"])
    parser.add_argument("--train-minutes", type=float, default=2.0, help="the scene's training footage")
    parser.add_argument("--seed", type=int, default=0, help="the scene's seed")
    parser.add_argument("--reuse", action="store_true", help="keep models already trained in --out (same scene)")
    args = parser.parse_args()
    out = args.out.resolve()
    scene = out / "scene"
    if not (scene / "labels.csv").is_file():
        vad(
            "scene",
            "--out",
            str(scene),
            "--seed",
            str(args.seed),
            "--train-minutes",
            str(args.train_minutes),
            "--quiet",
        )
    labels = scene / "labels.csv"
    rows = []
    for method in args.methods:
        model = out / method
        train = [
            "--config",
            "configs/own_camera.yaml",
            "--source",
            str(scene / "train"),
            "--out",
            str(model),
            "--quiet",
        ]
        if not (args.reuse and model.with_suffix(".onnx").is_file()):
            vad("train", method, *train)
        seconds = json.loads(model.with_suffix(".json").read_text())["training"]["seconds"]
        calibrated = out / f"{method}_calibrated.onnx"
        vad(
            "calibrate",
            "--model",
            str(model.with_suffix(".onnx")),
            "--source",
            str(scene / "calibrate"),
            "--out",
            str(calibrated),
            "--quiet",
        )
        reports = {}
        for kind in ("all", *KINDS):
            sources = [scene / "test"] if kind == "all" else [scene / "test" / f"{kind}.mp4"]
            where = out / "eval" / method / kind
            evaluation = ["--labels", str(labels), "--model", str(calibrated), "--out", str(where), "--quiet"]
            vad("eval", "clips", "--source", *map(str, sources), *evaluation)
            reports[kind] = json.loads((where / "report.json").read_text())
        threshold = json.loads(calibrated.with_suffix(".json").read_text())["scoring"]["threshold"]
        normal = [f for f in reports["all"]["frames"] if not f["label"]]
        false_alarms = sum(f["score"] > threshold for f in normal) / len(normal)
        rows.append((method, seconds, reports, false_alarms))
        print(f"{method} done", flush=True)
    print(
        f"\ngenerated scene, seed {args.seed}, {args.train_minutes:g} min of training footage: causal pooled EER / AUC"
    )
    print(f"{'method':<12}{'all':>16}" + "".join(f"{k:>13}" for k in KINDS) + f"{'false alarms':>14}{'train, s':>10}")
    for method, seconds, reports, false_alarms in rows:
        cells = "".join(f"{reports[k]['auc']:>13.3f}" for k in KINDS)
        overall = f"{reports['all']['eer']:.2%} / {reports['all']['auc']:.3f}"
        print(f"{method:<12}{overall:>16}{cells}{false_alarms:>14.2%}{seconds:>10.0f}")
    print(
        "(per kind: AUC on that test clip alone; false alarms: normal test frames above the calibrated threshold; "
        "train: the card's seconds, reading and fitting)"
    )


if __name__ == "__main__":
    main()
