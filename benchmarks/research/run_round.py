"""Train and score every candidate of a selection round through the product's own commands.

    python benchmarks/research/run_round.py benchmarks/research/rounds/round1.yaml --runs runs/rounds --jobs 2

A round file, committed before any of its candidates is scored on the test
set, lists candidates as a base config plus overrides:

    candidates:
      - name: nre_gray_fused          # also the folder RUNS/NAME
        family: appearance+density    # for the tables
        method: nre                   # vad train METHOD
        base: configs/nre_ped2.yaml
        overrides: {patches: {appearance: true}, density: {score: fused}}
        after: sdae_base              # optional: a candidate whose output this one reads (DEC's SDAE)
      - {name: bundled_nre, family: baseline, method: nre, model: streamer/models/nre_ped2.onnx}  # scored as is

For each candidate this writes RUNS/NAME/config.yaml (the base with the
overrides, `out: RUNS/NAME/model` and `threads: --threads`), runs `vad train
METHOD --config` there (log in RUNS/NAME/train.log), then `vad eval ped2
--model RUNS/NAME/model.onnx --out RUNS/NAME` (report.json; eval.log). A
candidate given as a `model` is only scored.
Candidates whose report exists are skipped, so an interrupted round resumes.
`--jobs` candidates run at once (under `nice`); then
`benchmarks/research/nested_selection.py --round FILE --runs RUNS` reads the
reports. Only training data goes into the models, their calibration and
thresholds; the test set is read by `vad eval` alone.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import yaml

from streamer.config import merge, read_yaml

VAD = [sys.executable, "-m", "streamer.cli"]  # `vad`, from this interpreter's environment


def candidate_config(candidate: dict, folder: Path, threads: int) -> dict:
    cfg = merge(read_yaml(candidate["base"]), candidate.get("overrides") or {})
    return merge(cfg, {"out": str(folder / "model"), "threads": threads, "method": candidate["method"]})


def run_candidate(candidate: dict, runs: Path, threads: int, data: str | None) -> str:
    """Train and score one candidate; returns a one-line summary (raises on a failed command)."""
    folder = runs / candidate["name"]
    folder.mkdir(parents=True, exist_ok=True)
    data_args = ["--data", data] if data else []
    model = candidate.get("model") or str(folder / "model.onnx")
    commands = [
        (
            ["vad", "eval", "ped2", "--model", model, "--out", str(folder), "--quiet", "--threads", str(threads)]
            + data_args,
            "eval.log",
        )
    ]
    if "model" not in candidate:
        config = folder / "config.yaml"
        config.write_text(yaml.safe_dump(candidate_config(candidate, folder, threads), sort_keys=False))
        train = ["vad", "train", candidate["method"], "--config", str(config), "--quiet", *data_args]
        commands.insert(0, (train, "train.log"))
    started = time.perf_counter()
    for command, log in commands:
        with open(folder / log, "w") as out:
            done = subprocess.run(["nice", "-n", "10", *VAD, *command[1:]], stdout=out, stderr=subprocess.STDOUT)
        if done.returncode:
            raise RuntimeError(f"{candidate['name']}: `{' '.join(command)}` failed, see {folder / log}")
    return f"{candidate['name']}: trained and scored in {time.perf_counter() - started:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("round", type=Path, help="round file (benchmarks/research/rounds/roundN.yaml)")
    parser.add_argument("--runs", type=Path, default=Path("runs/rounds"), help="one folder per candidate here")
    parser.add_argument("--jobs", type=int, default=2, help="candidates at once")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads per candidate")
    parser.add_argument("--data", help="UCSDped2 folder (default: $VAD_PED2, then ../shared/datasets/UCSDped2)")
    parser.add_argument("--only", nargs="+", help="these candidates only")
    args = parser.parse_args(argv)

    candidates = yaml.safe_load(args.round.read_text())["candidates"]
    names = [c["name"] for c in candidates]
    if len(set(names)) != len(names):
        parser.error("two candidates share a name")
    todo = [c for c in candidates if not (args.runs / c["name"] / "report.json").is_file()]
    if args.only:
        todo = [c for c in todo if c["name"] in args.only]
    print(f"{len(todo)} of {len(candidates)} candidates to train and score", flush=True)
    pending, running, failed = list(todo), {}, []
    waiting_on = {c["name"] for c in todo}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        while pending or running:
            ready = [c for c in pending if c.get("after") not in waiting_on]
            for candidate in ready[: args.jobs - len(running)]:
                pending.remove(candidate)
                running[pool.submit(run_candidate, candidate, args.runs, args.threads, args.data)] = candidate
            if not running:  # what is left waits on a candidate that failed
                failed += [c["name"] for c in pending]
                break
            finished: set[Future] = wait(running, return_when=FIRST_COMPLETED).done
            for future in finished:
                candidate = running.pop(future)
                waiting_on.discard(candidate["name"])
                try:
                    print(future.result(), flush=True)
                except RuntimeError as e:
                    print(e, flush=True)
                    failed.append(candidate["name"])
                    pending = [c for c in pending if c.get("after") != candidate["name"]]
                    failed += [c["name"] for c in todo if c.get("after") == candidate["name"]]
    if failed:
        print(f"failed or skipped: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"done; next: python benchmarks/research/nested_selection.py --round {args.round} --runs {args.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
