"""Train and score each training config with several seeds: figures with their spread, and the median seed's model.

    python benchmarks/method_seeds.py configs/nre_ped2.yaml configs/ics_ped2.yaml --seeds 0 1 2 --out runs/seeds

For every config and seed, a run in OUT/<config name>/seed<N>/:
  config.yaml   the config as run (the seed, the thread count, and for DEC the SDAE of the same seed)
  <name>.onnx   the model, its card <name>.json and encoder graph, from `vad train` in a child process
  eval/         `vad eval ped2`: report.json (every test frame's causal score: what nested selection reads)
  result.json   the run's figures; a run that has it is finished and is skipped when the script runs again
Then, per config: the mean, the sample standard deviation and the min-max over the seeds of the causal
pooled EER and AUC, the per-video min-max EER and AUC (non-causal), the recall and the false-alarm rate
at the card's threshold, the speed-proxy EER of the card, and the training time. The median seed is the
one whose pooled EER is the median (of an even count, the lower of the two middle ones). `--bundle DIR`
copies each config's median-seed model, card and encoder graph into DIR. OUT/summary.json holds it all,
OUT/summary.md the table in Markdown.

A DEC config that refines the SDAE another given config trains (its sdae.checkpoint is that config's
`out` + .sdae.npz, as configs/dec_ped2.yaml names configs/sdae_kmeans_ped2.yaml's) refines the SDAE of
the same seed, so a seed covers the whole DEC pipeline; it waits for that run. Each training takes a few
GB of memory: `--jobs 2` runs two at a time where memory allows, never more.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from streamer import config
from training.checks import checked_config
from training.config import TrainConfig

log = logging.getLogger("method_seeds")

# (key in result.json, label, scale, unit, decimals)
FIGURES = [
    ("eer", "causal pooled EER", 100, " %", 2),
    ("auc", "causal pooled AUC", 1, "", 3),
    ("eer_normalized", "per-video EER (non-causal)", 100, " %", 2),
    ("auc_normalized", "per-video AUC (non-causal)", 1, "", 3),
    ("recall", "recall at threshold", 100, " %", 1),
    ("false_alarm_rate", "false alarms at threshold", 100, " %", 2),
    ("proxy_eer", "speed-proxy EER (training data)", 100, " %", 2),
    ("train_minutes", "training minutes", 1, "", 1),
]


@dataclass
class Run:
    name: str  # the config file's stem: the model's file name and the run's folder
    method: str
    seed: int
    folder: Path
    config: dict  # the YAML as run
    after: Run | None = None  # the run whose SDAE this one refines

    @property
    def label(self) -> str:
        return f"{self.name} seed {self.seed}"

    @property
    def model(self) -> Path:
        return self.folder / f"{self.name}.onnx"

    @property
    def result_file(self) -> Path:
        return self.folder / "result.json"


SDAE_METHODS = ("sdae_kmeans", "dec")


def reused_sdae(cfg: TrainConfig) -> Path | None:
    """The SDAE checkpoint a sdae_kmeans or dec config starts from, if it names one."""
    return Path(cfg.sdae.checkpoint).resolve() if cfg.method in SDAE_METHODS and cfg.sdae.checkpoint else None


def plan(config_paths: list[Path], seeds: list[int], threads: int | None, out: Path) -> list[Run]:
    """Every (config, seed) run, checked as `vad train` would check it, with the SDAE each DEC run refines."""
    names = [p.stem for p in config_paths]
    if len(set(names)) != len(names):
        raise SystemExit(f"configs must have distinct file names (each names its runs' folder): {names}")
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"seeds repeat: {seeds}")
    loaded = {p.stem: (config.read_yaml(p), config.load(p, TrainConfig)) for p in config_paths}
    # where a run saves the SDAE it trains (training.train): OUT.sdae.npz
    trains_sdae = {
        Path(cfg.out).with_suffix(".sdae.npz").resolve(): name
        for name, (_, cfg) in loaded.items()
        if cfg.method in SDAE_METHODS and reused_sdae(cfg) is None
    }
    runs: dict[tuple[str, int], Run] = {}
    for name, (raw, cfg) in sorted(loaded.items(), key=lambda item: reused_sdae(item[1][1]) is not None):
        checkpoint = reused_sdae(cfg)
        source = trains_sdae.get(checkpoint) if checkpoint else None
        if checkpoint and source is None:
            if not checkpoint.is_file():
                raise SystemExit(
                    f"{name} refines the SDAE {checkpoint}, which no given config trains and which does not exist: "
                    "add the config that trains it (e.g. configs/sdae_kmeans_ped2.yaml)"
                )
            log.warning("%s refines the one SDAE %s in every seed: only k-means and DEC vary", name, checkpoint)
        for seed in seeds:
            folder = out / name / f"seed{seed}"
            overrides: dict = {"seed": seed, "out": str(folder / name)}
            if threads is not None:
                overrides["threads"] = threads
            after = runs[(source, seed)] if source else None
            if after is not None:
                overrides["sdae"] = {"checkpoint": str(after.folder / f"{source}.sdae.npz")}
            runs[(name, seed)] = Run(name, cfg.method, seed, folder, config.merge(raw, overrides), after)
    return sorted(runs.values(), key=lambda r: (r.after is not None, r.name, r.seed))


class RunFolderError(RuntimeError):
    pass


def check_folder(run: Run) -> str:
    """The run's config.yaml text; RunFolderError if its folder holds a run of another config."""
    text = yaml.safe_dump(run.config, sort_keys=False)
    path = run.folder / "config.yaml"
    if path.is_file() and path.read_text() != text:
        raise RunFolderError(
            f"{run.folder} holds a run of another config (its config.yaml differs): choose another --out or remove it"
        )
    return text


def finished(run: Run) -> dict | None:
    """The figures of a run finished before, with the config planned now; None if it has not finished."""
    check_folder(run)
    try:
        return json.loads(run.result_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def prepare(run: Run, data: str | None = None) -> None:
    """Write the run's config.yaml and check it as `vad train` will, its data and files with it."""
    text = check_folder(run)
    run.folder.mkdir(parents=True, exist_ok=True)
    (run.folder / "config.yaml").write_text(text)
    checked_config(run.folder / "config.yaml", {"data": {"root": data}} if data else None)


def vad(args: list[str], log_file: Path) -> None:
    """Run a `vad` command in a child process (memory is returned when it ends); its output goes to log_file."""
    with open(log_file, "w") as out:
        code = subprocess.call([sys.executable, "-m", "streamer.cli", *args], stdout=out, stderr=subprocess.STDOUT)
    if code:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"vad {args[0]} exited with status {code}; the end of {log_file}:\n{tail}")


def execute(run: Run, data: str | None) -> dict:
    """Train, evaluate, and write result.json: the run's figures and where its per-frame report is."""
    prepare(run, data)
    started = time.perf_counter()
    data_args = ["--data", data] if data else []
    vad(
        ["train", run.method, "--config", str(run.folder / "config.yaml"), "--quiet", *data_args],
        run.folder / "train.log",
    )
    card = json.loads(run.model.with_suffix(".json").read_text())
    threads = card["training"]["threads"]
    eval_args = ["--model", str(run.model), "--out", str(run.folder / "eval"), "--device", "cpu"]
    vad(["eval", "ped2", *eval_args, "--threads", str(threads), "--quiet", *data_args], run.folder / "eval.log")
    report = json.loads((run.folder / "eval" / "report.json").read_text())
    point = report["at_threshold"]
    result = {
        "config": run.name,
        "method": run.method,
        "seed": run.seed,
        "threads": threads,
        "cpu_capability": card["training"].get("cpu_capability"),
        "onnx_sha256": card["onnx_sha256"],
        "eer": report["eer"],
        "auc": report["auc"],
        "eer_normalized": report["eer_normalized"],
        "auc_normalized": report["auc_normalized"],
        "threshold": point["threshold"],
        "recall": point["recall"],
        "false_alarm_rate": point["false_alarm_rate"],
        "recall_by_clip": point["recall_by_clip"],
        "proxy_eer": card["training"].get("validation", {}).get("eer"),
        "train_minutes": card["training"]["seconds"] / 60,
        "report": str(run.folder / "eval" / "report.json"),
        "model": str(run.model),
        "wall_minutes": (time.perf_counter() - started) / 60,
    }
    run.result_file.write_text(json.dumps(result, indent=1) + "\n")
    return result


def schedule(runs: list[Run], data: str | None, jobs: int) -> tuple[dict[str, dict], list[str]]:
    """Run what is not finished yet, `jobs` at a time, each after the run it depends on; progress on stderr."""
    results = {r.label: finished(r) for r in runs}
    results = {label: res for label, res in results.items() if res is not None}
    pending = [r for r in runs if r.label not in results]
    log.info("%d runs: %d finished before, %d to do, %d at a time", len(runs), len(results), len(pending), jobs)
    failed: list[str] = []
    started, done = time.perf_counter(), 0
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running = {}
        while pending or running:
            for run in [r for r in pending if r.after is None or r.after.label in results][: jobs - len(running)]:
                pending.remove(run)
                log.info("start %s", run.label)
                running[pool.submit(execute, run, data)] = run
            for run in [r for r in pending if r.after is not None and r.after.label in failed]:
                pending.remove(run)
                failed.append(run.label)
                log.error("%s skipped: the run it refines (%s) failed", run.label, run.after.label)
            if not running:
                if pending:  # cannot happen with runs from plan(): a dependency always comes first
                    raise RuntimeError(f"runs waiting on runs that never started: {[r.label for r in pending]}")
                continue
            finished_now, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished_now:
                run = running.pop(future)
                done += 1
                try:
                    results[run.label] = future.result()
                except Exception as e:  # one failed run must not lose the others
                    failed.append(run.label)
                    log.error("%s failed: %s", run.label, e)
                    continue
                elapsed = (time.perf_counter() - started) / 60
                left = len(pending) + len(running)
                log.info(
                    "done %s: EER %.2f %% (%.1f min); %d to go, about %.0f min left",
                    run.label,
                    100 * results[run.label]["eer"],
                    results[run.label]["wall_minutes"],
                    left,
                    elapsed / done * left,
                )
    return results, failed


def median_seed(rows: list[dict]) -> dict:
    """The row whose pooled EER is the median; of an even count the lower middle one (ties: the lower seed)."""
    ordered = sorted(rows, key=lambda r: (r["eer"], r["seed"]))
    return ordered[(len(ordered) - 1) // 2]


def spread(values: list[float]) -> dict:
    v = np.array(values, dtype=float)
    return {
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
        "min": float(v.min()),
        "max": float(v.max()),
    }


def summarize(runs: list[Run], results: dict[str, dict]) -> dict:
    summary = {}
    for name in dict.fromkeys(r.name for r in runs):
        rows = [results[r.label] for r in runs if r.name == name and r.label in results]
        if not rows:
            continue
        summary[name] = {
            "method": rows[0]["method"],
            "seeds": [r["seed"] for r in rows],
            "threads": sorted({r["threads"] for r in rows}),
            "median_seed": median_seed(rows)["seed"],
            "figures": {
                key: spread([r[key] for r in rows]) for key, *_ in FIGURES if all(r[key] is not None for r in rows)
            },
            "runs": rows,
        }
    return summary


def cell(stats: dict, scale: float, unit: str, digits: int) -> str:
    sd = "n/a" if stats["sd"] is None else f"{scale * stats['sd']:.{digits}f}"
    low, high = scale * stats["min"], scale * stats["max"]
    return f"{scale * stats['mean']:.{digits}f} ± {sd}{unit} ({low:.{digits}f}–{high:.{digits}f})"


def print_summary(summary: dict) -> None:
    print("mean ± sample standard deviation (min–max) over the seeds")
    for name, entry in summary.items():
        seeds = " ".join(map(str, entry["seeds"]))
        threads = "/".join(map(str, entry["threads"]))
        print(f"\n{name} ({entry['method']}): seeds {seeds}, {threads} thread(s); median seed {entry['median_seed']}")
        for key, label, *style in FIGURES:
            if key in entry["figures"]:
                print(f"  {label:<34}{cell(entry['figures'][key], *style)}")
        print(
            "  per seed, causal pooled EER: " + ", ".join(f"{r['seed']}: {100 * r['eer']:.2f} %" for r in entry["runs"])
        )


def markdown_table(summary: dict) -> str:
    """The figures as a Markdown table, one row per config: mean ± sd (min–max) over the seeds."""
    shown = [f for f in FIGURES if any(f[0] in e["figures"] for e in summary.values())]
    lines = [
        "| config | seeds | " + " | ".join(label for _, label, *_ in shown) + " |",
        "|---" * (len(shown) + 2) + "|",
    ]
    for name, entry in summary.items():
        cells = [cell(entry["figures"][key], *style) if key in entry["figures"] else "" for key, _, *style in shown]
        lines.append(f"| {name} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bundle(summary: dict, target: Path) -> None:
    """Copy each config's median-seed model, card and encoder graph into `target`."""
    target.mkdir(parents=True, exist_ok=True)
    for name, entry in summary.items():
        row = next(r for r in entry["runs"] if r["seed"] == entry["median_seed"])
        model = Path(row["model"])
        card = json.loads(model.with_suffix(".json").read_text())
        files = [model, model.with_suffix(".json")]
        if card.get("encoder"):
            files.append(model.parent / card["encoder"]["file"])
        for f in files:
            shutil.copy2(f, target / f.name)
        log.info("bundled %s seed %d (EER %.2f %%) into %s", name, row["seed"], 100 * row["eer"], target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", type=Path, help="training configs (YAML), e.g. configs/*_ped2.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, help="torch threads for every run (default: each config's own)")
    parser.add_argument("--data", help="UCSDped2 folder (default: $VAD_PED2, then ../shared/datasets/UCSDped2)")
    parser.add_argument("--out", type=Path, default=Path("runs/seeds"), help="folder of the runs and summary.json")
    parser.add_argument("--jobs", type=int, default=1, choices=[1, 2], help="runs at a time (each takes a few GB)")
    parser.add_argument("--bundle", type=Path, help="copy each config's median-seed model, card and encoder here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    try:
        runs = plan(args.configs, args.seeds, args.threads, args.out)
        results, failed = schedule(runs, args.data, args.jobs)
    except (config.ConfigError, RunFolderError) as e:
        raise SystemExit(str(e)) from None
    summary = summarize(runs, results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.out / "summary.md").write_text(markdown_table(summary))
    print_summary(summary)
    if failed:
        print(f"\nfailed: {', '.join(failed)} (see train.log and eval.log in their folders)", file=sys.stderr)
        return 1
    if args.bundle:
        bundle(summary, args.bundle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
