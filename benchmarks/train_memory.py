"""Peak memory of `vad train` on a long and a short video of the generated scene: it must not grow with length.

    python benchmarks/train_memory.py                 # 30 and 3 minutes, the autoencoder

Generates a 30-minute and a 3-minute video of the generated scene's normal
footage (training/scene.py, 10 frames/s), trains the same method on each in a
process of its own (`vad train METHOD --config configs/own_camera.yaml
--source VIDEO`), and prints both processes' peak resident memory (the
kernel's ru_maxrss of each child). The training sample and the calibration
keep at most what the config's bounds allow: here they are lowered
(`--moving`, `--static`, `--calibration-frames`) so that the short video
already fills them too, and the two peaks then differ only by what does grow
with the footage (one score per validation frame for the proxy). With the
shipped bounds, footage shorter than needed to fill them simply uses less.
Passes when the long video's peak is within 10 % of the short one's and both
are under 4 GB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from training.scene import SceneSpec, write_clip  # noqa: E402

LIMIT_BYTES = 4 * 1024**3


def train(method: str, config: Path, video: Path, out: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS in bytes of one `vad train` process."""
    command = [sys.executable, "-m", "streamer.cli", "--log-level", "warning", "train", method]
    command += ["--config", str(config), "--source", str(video), "--out", str(out), "--quiet"]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"training on {video} failed with status {process.returncode}")
    return time.perf_counter() - started, usage.ru_maxrss * 1024  # Linux reports kilobytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="ae", choices=["ae", "nre", "sdae_kmeans", "dec", "ics"])
    parser.add_argument("--minutes", type=float, nargs=2, default=[30.0, 3.0], help="the long and the short video")
    parser.add_argument("--moving", type=int, default=8000, help="data.max_moving_patches")
    parser.add_argument("--static", type=int, default=4000, help="data.max_static_patches")
    parser.add_argument("--calibration-frames", type=int, default=1000, help="export.calibration_frames")
    parser.add_argument("--workdir", type=Path, help="keep the videos and models here (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vad-train-memory-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        config = yaml.safe_load((REPO / "configs" / "own_camera.yaml").read_text())
        config["data"].update(max_moving_patches=args.moving, max_static_patches=args.static)
        config["export"]["calibration_frames"] = args.calibration_frames
        config_path = work / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        spec = SceneSpec()
        rows = []
        for minutes in args.minutes:
            video = work / f"scene_{minutes:g}min.mp4"
            if not video.is_file():
                print(f"generating {minutes:g} minutes of normal footage: {video}", flush=True)
                write_clip(video, spec, round(minutes * 60 * spec.fps), seed=0)
            print(f"training {args.method} on {video.name} ...", flush=True)
            seconds, peak = train(args.method, config_path, video, work / f"{args.method}_{minutes:g}min")
            rows.append((minutes, seconds, peak))
        print(
            f"\n{args.method}, sample bounds: {args.moving} moving + {args.static} static patches, "
            f"{args.calibration_frames} calibration frames ({spec.height}x{spec.width}, {spec.fps:g} frames/s)"
        )
        print(f"{'footage':>10}{'frames':>10}{'train, s':>12}{'peak RSS, MB':>16}")
        for minutes, seconds, peak in rows:
            print(f"{minutes:>8g} m{round(minutes * 60 * spec.fps):>10}{seconds:>12.0f}{peak / 2**20:>16.1f}")
        (long_peak, short_peak) = (rows[0][2], rows[1][2])
        ratio = long_peak / short_peak
        within = abs(ratio - 1) <= 0.10
        under = max(long_peak, short_peak) < LIMIT_BYTES
        print(f"long / short peak: {ratio:.3f} ({'within' if within else 'NOT within'} 10 %)")
        print(f"both under 4 GB: {'yes' if under else 'NO'}")
        if not (within and under):
            raise SystemExit(1)


if __name__ == "__main__":
    main()
