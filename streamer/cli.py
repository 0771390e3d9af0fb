"""The `vad` command. Each subcommand imports its heavy modules only when it runs."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

from .config import ConfigError
from .model import BUNDLED_MODEL

log = logging.getLogger("vad")

TRAIN_METHODS = ("ae", "nre", "sdae_kmeans", "dec", "ics", "crossmodal")
ALERT_MAX_BYTES = 1 << 20  # an event is a few kB; a larger message from the publisher is refused by libzmq


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def scoring_overrides(args: argparse.Namespace):
    """The card's scoring settings with --smoothing, --window, --aggregation applied; None when none is given."""
    from .scoring import ScoringSettings

    overrides = {
        k: v
        for k, v in {"smoothing": args.smoothing, "window": args.window, "aggregation": args.aggregation}.items()
        if v is not None
    }
    if not overrides:
        return None
    from .model import ModelCard, card_path_for

    base = ModelCard.load(card_path_for(args.model)).scoring.to_dict()
    return ScoringSettings.from_dict({**base, **overrides})


def print_report(report: dict, out: str | None) -> None:
    print(f"model      {report['model']} ({report['method']}, {report['provider']})")
    print(f"scored by  {report['scored_by']}")
    print(
        f"frames     {report['frames_scored']} scored, {report['frames_skipped']} skipped, "
        f"{report['frames_per_second']:.1f} frames/s"
    )
    if report["frames_busier_than_training"] is not None:
        print(
            f"busier     {report['frames_busier_than_training']} frames have more moving patches than any "
            f"training frame ({report['training_moving_max']})"
        )
    print(f"causal pooled (headline):        EER {report['eer']:.2%}  AUC {report['auc']:.4f}")
    print(f"per-video min-max (non-causal):  EER {report['eer_normalized']:.2%}  AUC {report['auc_normalized']:.4f}")
    point = report["at_threshold"]
    print(
        f"at threshold {point['threshold']:.4g}:          recall {point['recall']:.2%} of anomalous frames, "
        f"false alarms on {point['false_alarm_rate']:.2%} of normal frames"
    )
    print("recall by clip:  " + ", ".join(f"{clip} {recall:.0%}" for clip, recall in point["recall_by_clip"].items()))
    if out:
        print(f"wrote {Path(out) / 'report.json'} and {Path(out) / 'roc.png'}")


def refuse_skipped(report: dict, allow_skipped: bool) -> int:
    """Exit status 1, saying why, when frames could not be read (unless allowed); else 0."""
    skipped = report["frames_skipped"]
    if skipped and not allow_skipped:
        total = skipped + report["frames_scored"]
        print(
            f"vad: error: {skipped} of {total} test frames were not scored (unreadable, see the warnings above): "
            "the EER and AUC above leave them out. Mend the frames, or pass --allow-skipped to accept the figures",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_eval_ped2(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_ped2

    report = evaluate_ped2(
        args.model,
        args.data,
        args.out,
        args.device,
        args.threads,
        scoring_overrides(args),
        progress=not args.quiet,
        pipeline=args.pipeline,
        scorers=args.scorers,
    )
    print_report(report, args.out)
    return refuse_skipped(report, args.allow_skipped)


def cmd_eval_clips(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_clips

    report = evaluate_clips(
        args.model,
        args.source,
        args.labels,
        args.out,
        args.device,
        args.threads,
        scoring_overrides(args),
        progress=not args.quiet,
    )
    print_report(report, args.out)
    return refuse_skipped(report, args.allow_skipped)


def training_extra(command: str):
    """SystemExit saying how to install the [train] extra, for commands that need it."""
    return SystemExit(f"vad {command} needs the [train] extra (torch, onnx, scikit-learn): pip install -e '.[train]'")


def cmd_train(args: argparse.Namespace) -> int:
    try:
        from training.checks import checked_config as checked_training_config
        from training.train import train_model
    except ImportError as e:
        raise training_extra(f"train ({e})") from None
    overrides = {"method": args.method}
    data = {k: v for k, v in {"root": args.data, "sources": args.source, "duration": args.duration}.items() if v}
    if data:
        overrides["data"] = data
    if args.out:
        overrides["out"] = args.out
    cfg, _ = checked_training_config(args.config, overrides)
    card = train_model(cfg, progress=not args.quiet)
    summary = {
        "out": str(Path(cfg.out).with_suffix(".onnx")),
        "threshold": card.scoring.threshold,
        "seconds": card.training["seconds"],
    }
    if "validation" in card.training:
        summary["validation"] = card.training["validation"]
    print(json.dumps(summary, indent=1))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from training.calibration import recalibrate

    problems = []
    if args.threshold_quantile is not None and not 0 < args.threshold_quantile < 1:
        problems.append(f"--threshold-quantile must be in (0, 1), got {args.threshold_quantile}")
    if args.duration is not None and args.duration <= 0:
        problems.append(f"--duration must be > 0 seconds, got {args.duration}")
    if problems:
        raise ConfigError(problems, "vad calibrate")
    card = recalibrate(
        args.model,
        args.source,
        args.out,
        duration=args.duration,
        threshold_quantile=args.threshold_quantile,
        max_frames=args.max_frames,
        device=args.device,
        threads=args.threads,
        progress=not args.quiet,
    )
    record = card.calibrated_on
    print(f"calibrated {Path(args.out).with_suffix('.onnx')} on {record['frames']} frames of normal footage")
    print(
        f"threshold  {record['from_threshold']:.3f} -> {card.scoring.threshold:.3f}: "
        f"{record['passing_from_threshold']:.2%} -> {record['passing_threshold']:.2%} of this footage's frames above it"
    )
    return 0


def cmd_scene(args: argparse.Namespace) -> int:
    from training.scene import SceneSpec, generate

    height, width = args.size
    description = generate(
        args.out,
        seed=args.seed,
        train_minutes=args.train_minutes,
        spec=SceneSpec(height=height, width=width),
        progress=not args.quiet,
    )
    out = Path(args.out)
    print(f"wrote {out / 'train'}, {out / 'calibrate'}, {out / 'test'} and {out / 'labels.csv'}")
    for kind, runs in description["anomalous_frames"].items():
        print(f"  test/{kind}.mp4: anomalous frames {', '.join(f'{first}-{last}' for first, last in runs)}")
    return 0


def frame_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 180x240, got {text!r}") from None
    if height < 60 or width < 60:
        raise argparse.ArgumentTypeError(f"the scene needs at least 60x60 pixels, got {text}")
    return height, width


def cmd_select(args: argparse.Namespace) -> int:
    try:
        from training.select import SelectionError, select
    except ImportError as e:
        raise training_extra(f"select ({e})") from None
    try:
        manifest = select(
            args.source,
            args.k,
            args.out,
            model=args.model,
            random=args.random,
            seed=args.seed,
            every=args.every,
            device=args.device,
            threads=args.threads,
            progress=not args.quiet,
        )
    except SelectionError as e:
        print(f"vad: error: {e}", file=sys.stderr)
        return 2
    print(
        f"chose {len(manifest['chosen'])} of {manifest['frames_considered']} frames: {Path(args.out) / 'manifest.json'}"
    )
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    import zmq

    from .pipeline import checks, telemetry
    from .pipeline import config as pipeline_config
    from .pipeline.runtime import stop_on_signals, tune_allocator

    tune_allocator()
    cfg = pipeline_config.load(args.config)
    if args.name in ("capture", "patcher"):
        if not args.camera:
            raise ConfigError([f"the {args.name} stage serves one camera: pass --camera ID"])
        cfg.camera(args.camera)
    ref = pipeline_config.StageRef(args.name, args.camera if args.name in ("capture", "patcher") else None, args.index)
    if ref not in pipeline_config.stage_refs(cfg):
        why = "scorer --index must be < scorer.processes; the notifier needs a notify section"
        raise ConfigError([f"{ref.label} is not a stage of this config ({why})"])
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {ref.label} %(name)s: %(message)s"))
    stop = stop_on_signals()
    telemetry.initialise(ref.name, [ref.camera] if ref.camera else [c.id for c in cfg.cameras])
    if cfg.metrics.enabled:
        port = pipeline_config.metrics_port(cfg, ref)
        try:
            telemetry.serve(cfg.metrics, port)
        except OSError as e:
            raise ConfigError([f"metrics: cannot serve on {cfg.metrics.host}:{port}: {e.strerror or e}"]) from None
    for warning in checks.warnings(cfg):
        log.warning("%s", warning)
    from .pipeline import alerter, capture, patcher, scorer

    def notify() -> int:
        from .pipeline import notifier  # paho and urllib.request: only this stage loads them

        return notifier.run(cfg, stop)

    runners = {
        "capture": lambda: capture.run(cfg, args.camera, stop),
        "patcher": lambda: patcher.run(cfg, args.camera, stop),
        "scorer": lambda: scorer.run(cfg, args.index, stop),
        "alerter": lambda: alerter.run(cfg, stop),
        "notifier": notify,
    }
    try:
        return runners[args.name]()
    except zmq.ZMQError as e:
        raise ConfigError([f"{ref.label}: cannot use a socket: {e}"]) from None


def cmd_config_check(args: argparse.Namespace) -> int:
    """A pipeline config as `vad run` (or, with --stage, `vad stage`) checks it; a training config as `vad train`."""
    from .config import read_yaml

    data = read_yaml(args.file)
    if "method" in data and "cameras" not in data and not args.stage:
        return check_training_config(args.file)
    from .pipeline import checks
    from .pipeline.config import stage_refs
    from .pipeline.notify_config import unreachable

    cfg = checks.checked_config(args.file, args.stage)
    for warning in checks.warnings(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    security = "CURVE on" if cfg.security.curve.enabled else "CURVE off"
    reach = "remote endpoints allowed" if cfg.security.allow_remote else "loopback and ipc only"
    if args.stage:
        stages = sorted(set(args.stage))
        what = f"valid for stage{'s' * (len(stages) > 1)} {', '.join(stages)}"
    else:
        stages = sorted({ref.name for ref in stage_refs(cfg)})
        what = f"valid: {len(cfg.cameras)} camera(s), {len(stage_refs(cfg))} stage processes"
    log_file = f"; event log {cfg.alerter.event_log}" if "alerter" in stages else ""
    notify = cfg.notify if "notifier" in stages else None
    destinations = "; notify " + ", ".join(f"{d.name} ({d.address})" for d in notify.destinations) if notify else ""
    print(f"{args.file}: {what}, {reach}, {security}{log_file}{destinations}")
    for warning in unreachable(notify):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def check_training_config(path: str) -> int:
    try:
        from training.checks import checked_config as checked_training_config
    except ImportError as e:
        raise SystemExit(f"{path} is a training config (it has `method:`); checking it needs the [train] extra ({e})")
    cfg, footage = checked_training_config(path)
    data = cfg.data
    if data.validation_clips:
        held = f"{len(data.validation_clips)} held out for validation"
    else:
        held = f"{data.validation_share:.0%} of the footage held out for validation"
    live = f" and {len(footage.live)} live source(s) to record for {data.duration:g} s" if footage.live else ""
    print(
        f"{path}: valid training config: {cfg.method}, {len(footage.clips)} training clips{live} ({held}); "
        f"writes {cfg.out}.onnx and {cfg.out}.json"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import checks
    from .pipeline.runtime import stop_on_signals
    from .pipeline.supervisor import Supervisor

    cfg = checks.checked_config(args.config)
    for warning in checks.warnings(cfg):
        log.warning("%s", warning)
    return Supervisor(args.config, cfg, args.log_level).run(stop_on_signals())


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from .pipeline import security

    try:
        public, secret = security.generate(args.out, args.name, args.authorize)
    except FileExistsError as e:
        raise ConfigError([str(e)]) from None
    print(f"public key  {public}   (give it out: copy it into the authorized_keys folder of the pipeline)")
    print(f"secret key  {secret}   (keep it: readable by its owner only)")
    if args.authorize:
        print(f"authorized  {Path(args.authorize) / public.name}")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """The supervisor's view of its stages and each camera's state; with --stage, one stage process (e.g. a
    scorer on its own host)."""
    from prometheus_client.parser import text_string_to_metric_families

    from .pipeline import config as pipeline_config
    from .pipeline import telemetry
    from .pipeline.config import StageRef

    cfg = pipeline_config.load(args.config)
    if args.stage:
        return stage_health(cfg, args)

    def samples(port: int, name: str) -> list:
        """The samples of one metric at a process's /metrics; OSError if it does not answer."""
        text = telemetry.fetch(cfg.metrics, port, args.timeout)
        return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]

    def samples_or_none(port: int, name: str) -> list | None:
        try:
            return samples(port, name)
        except OSError:
            return None

    try:
        stages = samples(pipeline_config.supervisor_metrics_port(cfg), "vad_stage_up")
    except OSError as e:
        print(f"unhealthy: the supervisor does not answer at {e}", file=sys.stderr)
        return 1
    for sample in stages:
        print(f"{StageRef.from_metric_labels(sample.labels).label:<24} {'up' if sample.value else 'restarting'}")
    # A camera is only watched if the alerter takes its frames: all of them rejected is a blind camera.
    blind = samples_or_none(pipeline_config.metrics_port(cfg, StageRef("alerter")), "vad_camera_blind")
    blind = {s.labels["camera"]: s.value for s in blind} if blind is not None else {}
    healthy = True
    for camera in cfg.cameras:
        up = samples_or_none(pipeline_config.metrics_port(cfg, StageRef("capture", camera.id)), "vad_camera_up")
        if blind.get(camera.id):
            state, healthy = "blind (its frames reach the alerter and every one is rejected)", False
        elif not up or camera.id not in blind:
            state = "unknown (its capture or the alerter does not answer)"
        else:
            state = "up" if up[0].value else "down (no frames from its source)"
        print(f"{f'camera[{camera.id}]':<24} {state}")
    return 0 if healthy else 1


def stage_health(cfg, args: argparse.Namespace) -> int:
    """0 while the stage answers and no endpoint it connects to refuses its handshake; 1 otherwise."""
    from prometheus_client.parser import text_string_to_metric_families

    from .pipeline import config as pipeline_config
    from .pipeline import telemetry

    ref = pipeline_config.StageRef(
        args.stage, args.camera if args.stage in ("capture", "patcher") else None, args.index
    )
    if ref not in pipeline_config.stage_refs(cfg):
        raise ConfigError([f"{ref.label} is not a stage of this config (--camera ID for capture and patcher)"])
    try:
        text = telemetry.fetch(cfg.metrics, pipeline_config.metrics_port(cfg, ref), args.timeout)
    except OSError as e:
        print(f"unhealthy: {ref.label} does not answer at {e}", file=sys.stderr)
        return 1
    refused = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "vad_links_refused"
    )
    if refused:
        print(
            f"unhealthy: {ref.label} is up, but {refused:.0f} endpoint(s) it connects to refuse its handshake "
            "(its log says why)",
            file=sys.stderr,
        )
        return 1
    print(f"{ref.label:<24} up")
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    """Print the events a pipeline publishes; a refused handshake is reported within seconds and retried."""
    import zmq

    from .pipeline import config as pipeline_config
    from .pipeline import security
    from .pipeline.links import Links

    endpoint, curve = args.endpoint, None
    if args.config:
        cfg = pipeline_config.load(args.config)
        endpoint, curve = cfg.alerter.events_endpoint, cfg.security.curve
    keys = None
    if args.key or (curve and curve.enabled):
        if not args.server_key and not (curve and curve.enabled):
            raise ConfigError(["--key needs --server-key: the pipeline's public key (NAME.key)"])
        try:
            server_key = security.load_public_key(args.server_key or curve.secret_key)
            keys = (*security.load_key_pair(args.key or curve.secret_key), server_key)
        except ValueError as e:
            raise ConfigError([str(e)]) from None
    with zmq.Context() as ctx, ctx.socket(zmq.SUB) as socket:
        socket.setsockopt(zmq.MAXMSGSIZE, ALERT_MAX_BYTES)
        if keys:
            security.set_client_keys(socket, *keys)
        try:
            socket.connect(endpoint)
        except zmq.ZMQError as e:
            raise ConfigError([f"cannot subscribe to {endpoint!r}: {e}"]) from None
        socket.subscribe(b"event")
        log.info("listening for events on %s", endpoint)
        links = Links(socket, "alerts", (endpoint,))
        try:
            return print_events(socket, links, args.count, args.timeout)
        finally:
            links.close()


def print_events(socket, links, count: int | None, timeout: float | None) -> int:
    """Events as JSON lines until `count` were printed (0) or none came for `timeout` seconds (1)."""
    received, last = 0, time.monotonic()
    while count is None or received < count:
        links.poll()
        if socket.poll(250):
            _topic, body = socket.recv_multipart()
            print(body.decode(), flush=True)
            received, last = received + 1, time.monotonic()
        elif timeout and time.monotonic() - last > timeout:
            if links.refused:
                print(f"vad: error: {links.refused[0]} refused every handshake for {timeout:g} s", file=sys.stderr)
            return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo_notify, run_demo

    logging.getLogger().setLevel(logging.WARNING)  # the demo prints what matters; stage warnings still show
    notify = demo_notify(args.mqtt, args.webhook)
    return run_demo(
        args.model, args.clip, not args.fast, args.metrics_port, args.json, notify=notify, ui=not args.no_ui
    )


def cmd_ui(args: argparse.Namespace) -> int:
    from .ui.server import serve, site_for_config, site_for_run_dir

    if args.config:
        from .pipeline import config as pipeline_config

        site = site_for_config(pipeline_config.load(args.config), args.host, args.port)
    else:
        site = site_for_run_dir(args.run_dir, args.host or "127.0.0.1", args.port or 8080)
    print(f"review page: {site.url}{'  (needs the token: open ?token=TOKEN once)' if site.token else ''}", flush=True)
    serve(site)
    return 0


def at_least(low: int):
    """An argparse type: an integer >= low."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def add_evaluation_arguments(p: argparse.ArgumentParser) -> None:
    """The options `vad eval ped2` and `vad eval clips` share: the model, the report, the scoring overrides."""
    p.add_argument(
        "--model", default=str(BUNDLED_MODEL), help="model .onnx with its .json card (default: the bundled DEC model)"
    )
    p.add_argument("--out", help="folder for report.json and roc.png")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--threads", type=at_least(0), default=0, help="onnxruntime intra-op threads (0: all cores)")
    p.add_argument("--smoothing", choices=["none", "mean", "ema"], help="override the card's causal smoothing")
    p.add_argument("--window", type=at_least(1), help="override the smoothing window (frames)")
    p.add_argument("--aggregation", choices=["max", "topk"], help="override patch-to-frame aggregation")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vad", description="Streaming video anomaly detection")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="evaluate a model on a benchmark").add_subparsers(dest="benchmark", required=True)
    p = ev.add_parser("ped2", help="frame-level EER and AUC on the UCSD Ped2 test clips")
    p.add_argument("--data", help="UCSDped2 folder (default: $VAD_PED2, then ../shared/datasets/UCSDped2)")
    add_evaluation_arguments(p)
    p.add_argument(
        "--pipeline", action="store_true", help="score through the multi-process streaming pipeline (same scores)"
    )
    p.add_argument("--scorers", type=at_least(1), default=1, help="with --pipeline: scorer processes")
    p.add_argument(
        "--allow-skipped",
        action="store_true",
        help="exit 0 even if test frames could not be read (they are left out of the figures)",
    )
    p.set_defaults(func=cmd_eval_ped2)

    p = ev.add_parser("clips", help="frame-level EER and AUC on any footage labelled frame by frame (a CSV)")
    p.add_argument(
        "--source", nargs="+", action="extend", required=True, help="video files, frame folders, or folders of them"
    )
    p.add_argument("--labels", required=True, help="CSV with the header clip,frame,label: 0 normal, 1 anomalous")
    add_evaluation_arguments(p)
    p.add_argument(
        "--allow-skipped",
        action="store_true",
        help="exit 0 even if frames could not be read (they are left out of the figures)",
    )
    p.set_defaults(func=cmd_eval_clips)

    p = sub.add_parser("train", help="train a one-class model on normal video and export it to ONNX")
    p.add_argument("method", choices=TRAIN_METHODS)
    p.add_argument("--config", required=True, help="YAML training config (see configs/)")
    p.add_argument(
        "--source",
        nargs="+",
        action="extend",
        help="override data.sources: normal footage, i.e. video files, frame folders, folders of them, the Ped2 "
        "layout, or live URLs (recorded for --duration)",
    )
    p.add_argument("--duration", type=float, help="seconds to record from each live source before training")
    p.add_argument("--data", help="override data.root: the UCSDped2 folder (used when there are no sources)")
    p.add_argument("--out", help="override out: output path without suffix")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "calibrate", help="refit a model's calibration, gate and threshold on normal footage of a new scene or camera"
    )
    p.add_argument("--model", required=True, help="model .onnx with its .json card")
    p.add_argument(
        "--source", nargs="+", action="extend", required=True, help="normal footage, as for `vad train --source`"
    )
    p.add_argument("--out", required=True, help="the new model: OUT.onnx (a copy of the network) and its card")
    p.add_argument("--duration", type=float, help="seconds to record from each live source first")
    p.add_argument(
        "--threshold-quantile", type=float, help="share of normal frames below the threshold (default: the card's)"
    )
    p.add_argument(
        "--max-frames", type=at_least(1000), default=20_000, help="most frames kept for the fit (longer: sampled)"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--threads", type=at_least(0), default=0, help="onnxruntime intra-op threads (0: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("select", help="choose k representative frames of recordings (k-means on encoder latents)")
    p.add_argument("--model", help="model .onnx exported by `vad train`; its card names the encoder graph used")
    p.add_argument(
        "--source",
        nargs="+",
        required=True,
        help="video files, frame folders, or folders of frame folders (one clip each)",
    )
    p.add_argument("--k", type=int, required=True, help="how many frames to choose")
    p.add_argument("--out", required=True, help="folder for the chosen frames and manifest.json")
    p.add_argument("--random", action="store_true", help="choose k frames at random instead (the baseline)")
    p.add_argument("--seed", type=int, default=0, help="k-means initialisation or random draw")
    p.add_argument("--every", type=int, default=1, help="consider every N-th frame only (long recordings)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--threads", type=at_least(0), default=0, help="onnxruntime intra-op threads (0: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("scene", help="generate a walkway scene: normal footage, test clips with labelled anomalies")
    p.add_argument("--out", required=True, help="folder for train/, calibrate/, test/, labels.csv and scene.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-minutes", type=float, default=2.0, help="length of the normal training footage")
    p.add_argument("--size", type=frame_size, default=(180, 240), help="frame size HEIGHTxWIDTH (default 180x240)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_scene)

    p = sub.add_parser("demo", help="the whole pipeline on the bundled sample clip: events as they fire, a summary")
    p.add_argument("--model", help="model .onnx with its .json card (default: the bundled model)")
    p.add_argument("--clip", help="another video file or image folder to play (default: the bundled Ped2 clip)")
    p.add_argument("--fast", action="store_true", help="play as fast as the pipeline goes, not at the clip's fps")
    p.add_argument("--metrics-port", type=int, help="first metrics port (default 9100, or free ones if taken)")
    p.add_argument("--json", action="store_true", help="print events as JSON lines")
    p.add_argument(
        "--mqtt", metavar="HOST[:PORT]", help="also deliver to this MQTT broker (topics vad/#, Home Assistant)"
    )
    p.add_argument("--webhook", metavar="URL", help="also POST start and end events to this URL")
    p.add_argument(
        "--no-ui",
        action="store_true",
        help="no review page (without this, the page is served during the run, and after it until Ctrl-C when "
        "the output is a terminal)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("ui", help="serve the event review page: events, snapshots, clips, camera states")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="the pipeline YAML the daemon runs (its ui: section, event log, metrics)")
    where.add_argument("--run-dir", help="a run folder alone (its events.sqlite and snapshots/)")
    p.add_argument("--host", help="address to serve on (default ui.host, 127.0.0.1); beyond loopback needs a token")
    p.add_argument("--port", type=int, help="default ui.port, 8080")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("run", help="run the streaming pipeline: every stage as its own process, supervised")
    p.add_argument("--config", required=True, help="pipeline YAML (see configs/camera.yaml)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("stage", help="run one pipeline stage alone (stages may sit on different hosts)")
    p.add_argument("name", choices=["capture", "patcher", "scorer", "alerter", "notifier"])
    p.add_argument("--config", required=True, help="pipeline YAML, the same file for every stage")
    p.add_argument("--camera", help="capture and patcher: the camera id this process serves")
    p.add_argument("--index", type=int, default=0, help="scorer: its number, 0 .. scorer.processes-1")
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("alerts", help="subscribe to a pipeline's events and print them as JSON lines")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint", help="the alerter's PUB endpoint, e.g. tcp://127.0.0.1:5560")
    where.add_argument("--config", help="take the endpoint from this pipeline YAML")
    p.add_argument("--count", type=int, help="exit after this many events")
    p.add_argument("--timeout", type=float, help="exit with status 1 after this many seconds without an event")
    p.add_argument("--key", help="CURVE: this subscriber's NAME.key_secret (its NAME.key in the pipeline's allow-list)")
    p.add_argument("--server-key", help="CURVE: the pipeline's public key, NAME.key")
    p.set_defaults(func=cmd_alerts)

    cfg = sub.add_parser("config", help="pipeline configs").add_subparsers(dest="action", required=True)
    p = cfg.add_parser(
        "check",
        help="check a pipeline YAML as `vad run` would (a training YAML as `vad train` would), creating nothing: "
        "exit 0 if valid, else every problem",
    )
    p.add_argument("file")
    p.add_argument(
        "--stage",
        action="append",
        choices=["capture", "patcher", "scorer", "alerter", "notifier"],
        help="check only what this stage needs (repeatable): on a host that runs some stages with `vad stage`",
    )
    p.set_defaults(func=cmd_config_check)

    keys = sub.add_parser("keys", help="CURVE key pairs").add_subparsers(dest="action", required=True)
    p = keys.add_parser("generate", help="write NAME.key (public) and NAME.key_secret (owner-only) into a folder")
    p.add_argument("--out", required=True, help="folder for the key files")
    p.add_argument("--name", required=True, help="e.g. pipeline, or a subscriber's name")
    p.add_argument("--authorize", help="also copy the public key into this authorized_keys folder")
    p.set_defaults(func=cmd_keys_generate)

    p = sub.add_parser(
        "health",
        help="prints each stage's and camera's state; exit 0 if the supervisor answers and no camera is blind",
    )
    p.add_argument("--config", required=True, help="the pipeline YAML the daemon runs")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")
    p.add_argument(
        "--stage",
        choices=["capture", "patcher", "scorer", "alerter", "notifier"],
        help="ask this stage process instead (run alone with `vad stage`): unhealthy also while its peers refuse it",
    )
    p.add_argument("--camera", help="with --stage capture or patcher: the camera id")
    p.add_argument("--index", type=at_least(0), default=0, help="with --stage scorer: its number")
    p.set_defaults(func=cmd_health)
    return parser


def interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if args.func not in (cmd_run, cmd_stage):  # those finish their work on SIGTERM; the rest clean up as on Ctrl-C
        signal.signal(signal.SIGTERM, interrupt)
    from .model import ModelError
    from .pipeline import PipelineError
    from .sources import SourceError

    try:
        return args.func(args)
    except (ConfigError, ModelError, SourceError, PipelineError) as e:
        print(f"vad: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vad: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
