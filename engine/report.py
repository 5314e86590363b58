"""`glassbox report`: train headless for N steps and describe every layer. Imports no Qt."""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import traceback
import warnings
from typing import Any, NoReturn, Sequence

import numpy as np

from engine.atomic_file import write_atomic

__all__ = ["build_parser", "collect_report", "main"]

log = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2


class _OneLineErrors(argparse.ArgumentParser):
    """A wrong flag is one line (and exit status 2), like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from engine.scenarios import DEFAULT_SCENARIO, SCENARIOS

    parser = _OneLineErrors(
        prog="glassbox report",
        description="Train a model headless for N steps, print a per-layer table and write JSON.",
        epilog="Scenarios: " + ", ".join(SCENARIOS) + f". Default: {DEFAULT_SCENARIO}.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--scenario", metavar="NAME", help="a built-in scenario (see the list below)")
    source.add_argument("--model", metavar="FILE.py:FUNC",
                        help="your model: a function with no arguments returning "
                             "(model, (X, y), loss_fn) or (model, data_loader, loss_fn), optionally with "
                             "validation data (X_val, y_val) or a loader of it as a fourth item (then "
                             "validated every 50 steps)")
    parser.add_argument("--steps", type=int, default=200, metavar="N", help="training steps (default 200)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to train (default: auto, CUDA when present)")
    parser.add_argument("--optimizer", choices=["sgd", "momentum", "adam", "adamw", "rmsprop"],
                        help="optimizer (default: the scenario's, or adam for your model)")
    parser.add_argument("--lr", type=float, metavar="X", help="learning rate")
    parser.add_argument("--batch-size", type=int, metavar="B", help="batch size")
    parser.add_argument("--every", type=int, default=1, metavar="K",
                        help="measure layers every K steps (default 1); other steps report null")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, data order and dropout")
    parser.add_argument("--json", metavar="PATH", help="write the full report as JSON here")
    parser.add_argument("--save", metavar="RUNFILE", help="save the run (history and tensors) to a run file")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def collect_report(run: Any, steps: int, every: int = 1) -> dict[str, Any]:
    """Train ``run`` for ``steps`` steps and gather the report's per-step series."""
    trainer = run.trainer
    layers = None
    losses = np.full(steps, np.nan)
    accuracies = np.full(steps, np.nan)
    validation: dict[str, list] = {"step": [], "loss": [], "accuracy": []}
    series: dict[str, np.ndarray] = {}
    names = ("grad_norm", "weight_norm", "act_mean", "act_std", "dead_fraction", "saturated_fraction")
    diagnostics = None
    fed = 0  # validation passes given to the diagnostics
    for k in range(steps):
        capture = (k + 1) % every == 0 or k == steps - 1
        result = trainer.step(capture=capture)
        if trainer.last_val is not None and trainer.last_val[2] == trainer.step_count:
            val_loss, val_acc, val_step = trainer.last_val
            validation["step"].append(val_step)
            validation["loss"].append(_json_number(val_loss))
            validation["accuracy"].append(_json_number(val_acc))
        if result.capture is None:
            continue
        got = result.capture.get()
        frame = got.frame
        scalars = got.scalars
        losses[k - len(scalars) + 1:k + 1] = scalars[:, 0]
        accuracies[k - len(scalars) + 1:k + 1] = scalars[:, 1]
        if layers is None:
            layers = trainer.probe.layers
            for name in names:
                series[name] = np.full((len(layers), steps), np.nan)
        for name in names:
            series[name][:, k] = frame.stat(name)
        if diagnostics is None:
            from engine.diagnostics import Diagnostics
            diagnostics = Diagnostics(layers, model_warnings=run.model_warnings, model_findings=run.model_findings)
            diagnostics.clip_norm = trainer.hyper.clip_norm
        diagnostics.update(frame)
        # Validation passes up to here, each against the mean training loss since the one before
        # (known now: a capture brings the losses of the steps since the last one).
        for index in range(fed, len(validation["step"])):
            val_step, val_loss = validation["step"][index], validation["loss"][index]
            since = losses[validation["step"][index - 1] if index else 0:val_step]
            diagnostics.update_validation(val_step, math.nan if val_loss is None else val_loss,
                                          float(np.nanmean(since)) if np.isfinite(since).any() else None)
        fed = len(validation["step"])
    assert layers is not None
    layers = trainer.probe.layers  # as they are now: a layer first called late counts as called
    out_layers = []
    for i, layer in enumerate(layers):
        entry: dict[str, Any] = {"name": layer.name, "type": layer.type_name, "params": layer.params,
                                 "trainable": layer.trainable,  # (False: requires_grad off for all it owns)
                                 "frozen_params": list(layer.frozen_params)}  # (some frozen, the rest not)
        for name in names:
            values = series[name][i]
            applies = {
                "grad_norm": layer.params > 0, "weight_norm": layer.params > 0,
                "act_mean": layer.called, "act_std": layer.called,
                "dead_fraction": not np.isnan(values).all() and layer.role == "activation",
                "saturated_fraction": not np.isnan(values).all() and layer.role == "activation",
            }[name]
            entry[name] = _json_list(values) if applies else None
        out_layers.append(entry)
    return {
        "steps": steps, "device": str(trainer.device), "scenario": run.name,
        "loss": _json_list(losses),
        "accuracy": None if np.isnan(accuracies).all() else _json_list(accuracies),
        "validation": validation, "layers": out_layers,
        "diagnoses": [d.to_json() for d in diagnostics.findings] if diagnostics is not None else [],
    }


def _json_list(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values]


def _json_number(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _fmt(value: float | None, pattern: str = "{:.3g}") -> str:
    """A number, "nan/inf" for one that isn't finite, "—" for none."""
    if value is None:
        return "—"
    return pattern.format(value) if math.isfinite(value) else "nan/inf"


def format_table(report: dict[str, Any]) -> str:
    header = f"{'layer':<28} {'type':<20} {'params':>8} {'|g| first':>10} {'|g| last':>10} " \
             f"{'act std':>9} {'dead %':>7} {'sat %':>7}"
    lines = [header, "-" * len(header)]

    def last(values: list | None) -> float | None:
        """The last step's value; NaN where it wasn't finite (JSON's null) after finite ones."""
        if not values:
            return None
        if values[-1] is None:
            return math.nan if any(v is not None for v in values) else None
        return values[-1]

    def first(values: list | None) -> float | None:
        if not values:
            return None
        finite = [v for v in values if v is not None]
        return finite[0] if finite else None

    for layer in report["layers"]:
        dead = last(layer["dead_fraction"])
        sat = last(layer["saturated_fraction"])
        if layer.get("trainable", True):
            grads = f"{_fmt(first(layer['grad_norm'])):>10} {_fmt(last(layer['grad_norm'])):>10}"
        else:  # (no gradient by the user's choice, not for want of one)
            grads = f"{'frozen':>10} {'frozen':>10}"
        lines.append(
            f"{layer['name'][:28]:<28} {layer['type'][:20]:<20} {layer['params']:>8} {grads} "
            f"{_fmt(last(layer['act_std'])):>9} {_fmt(None if dead is None else 100 * dead, '{:.1f}'):>7} "
            f"{_fmt(None if sat is None else 100 * sat, '{:.1f}'):>7}")
    losses = report["loss"]  # (null where a step's loss wasn't finite)
    lost = next((step for step, v in enumerate(losses, 1) if v is None), None)
    lines.append("")
    lines.append(f"loss: first {_fmt(first(losses), '{:.4g}')}, last {_fmt(last(losses), '{:.4g}')} over "
                 f"{report['steps']} steps on {report['device']}"
                 + (f" (not finite from step {lost})" if lost is not None else ""))
    if report["diagnoses"]:
        lines.append("diagnoses:")
        for d in report["diagnoses"]:
            shown = d["layers"] if len(d["layers"]) <= 4 else [*d["layers"][:2], "…", d["layers"][-1]]
            where = f" ({', '.join(shown)})" if shown else ""
            when = f"from step {d['step']}" if d["step"] else "before training"
            lines.append(f"  [{d['severity']}] {d['code']}{where} {when}: {d['message']}")
            if d.get("fixes"):
                lines.append(f"      try: {d['fixes'][0]}")
    else:
        lines.append("diagnoses: none")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("glassbox report: interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:  # one clear line for any bad input (a user's sys.exit or own kind too)
        if args.debug:
            traceback.print_exc()
        print(f"glassbox report: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _uses_loader(run: Any) -> bool:
    """Whether the run's batches come from the user's own data loader."""
    from engine.batches import LoaderBatches

    return isinstance(run.trainer.batches, LoaderBatches)


def _check_destination(option: str, path: str) -> None:
    """Refuse, before training, a path the result could not be written to."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{option} {path}: is a folder")
    if not os.path.isdir(folder):
        raise ValueError(f"{option} {path}: no folder {folder}")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{option} {path}: the folder {folder} is not writable")


def _run(args: argparse.Namespace) -> int:
    from engine.scenarios import DEFAULT_SCENARIO, build_run, build_user_run

    if args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    if args.every < 1:
        raise ValueError(f"--every must be at least 1, got {args.every}")
    if args.lr is not None and not (args.lr > 0 and math.isfinite(args.lr)):
        raise ValueError(f"--lr must be a positive number, got {args.lr}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    for option, path in (("--json", args.json), ("--save", args.save)):
        if path:
            _check_destination(option, path)
    _check_distinct({"--json": args.json, "--save": args.save,
                     "--model": args.model.rsplit(":", 1)[0] if args.model and ":" in args.model else None})
    hyper = {k: v for k, v in (("optimizer", args.optimizer), ("lr", args.lr),
                               ("batch_size", args.batch_size)) if v is not None}
    with _EachWarningOnce() as warnings_once:
        if args.model:
            run = build_user_run(args.model, device=args.device, seed=args.seed, hyper=hyper)
        else:
            run = build_run(args.scenario or DEFAULT_SCENARIO, device=args.device, seed=args.seed, hyper=hyper)
        if args.batch_size is not None and _uses_loader(run):
            print("glassbox report: note: --batch-size is ignored: your data loader sets the batch size",
                  file=sys.stderr)
        warnings_once.trainer = run.trainer
        warnings_once.said(run.model_warnings)  # (listed with the diagnoses)
        started = time.perf_counter()
        try:
            report = collect_report(run, args.steps, args.every)
            views = _final_views(run) if args.save else None  # (the probe is gone after close)
        finally:
            run.trainer.close()
    report["seconds"] = round(time.perf_counter() - started, 3)
    print(format_table(report))
    # The run file first: should it fail, an existing JSON report is still the old one.
    if args.save:
        _save(args.save, run, report, views)
        print(f"saved run to {args.save}")
    if args.json:
        write_atomic(args.json, json.dumps(report, indent=1).encode())
        print(f"wrote {args.json}")
    return 0


class _EachWarningOnce:
    """Prints each distinct Python warning once, as one line on stderr, naming the step it first
    came from. (torch repeats a warning, such as a loss broadcasting its target, at every step, and
    Python's own format adds a line of torch's source that tells the user nothing.)"""

    def __init__(self) -> None:
        self.trainer: Any = None  # set once training starts: warnings before it are "before training"
        self._seen: set[str] = set()
        self._caught = warnings.catch_warnings()

    def __enter__(self) -> "_EachWarningOnce":
        self._caught.__enter__()
        warnings.simplefilter("always")  # (repeats are told apart here, by their text)
        warnings.showwarning = self._show
        return self

    def __exit__(self, *exc: object) -> None:
        self._caught.__exit__(*exc)

    def said(self, texts: Sequence[str]) -> None:
        """Texts told another way, not to be printed again."""
        self._seen.update(" ".join(text.split()) for text in texts)

    def _show(self, message: Warning | str, category: type[Warning], filename: str, lineno: int,
              file: Any = None, line: str | None = None) -> None:
        text = " ".join(str(message).split())
        if text in self._seen:
            return
        self._seen.add(text)
        when = "before training" if self.trainer is None else f"at step {self.trainer.step_count + 1}"
        print(f"glassbox report: warning ({when}): {text}", file=sys.stderr)


def _check_distinct(paths: dict[str, str | None]) -> None:
    """No output may overwrite the other, or the model file (each would be lost without a word)."""
    seen: dict[str, str] = {}
    for option, path in paths.items():
        if not path:
            continue
        key = os.path.normcase(os.path.realpath(path))
        if key in seen:
            raise ValueError(f"{seen[key]} and {option} name the same file {path}: one would overwrite the other")
        seen[key] = option


def _final_views(run: Any) -> Any:
    """The last batch measured once more with its views (a ``Capture``, or None): the app's
    per-layer histograms, the Network view and the first weight layer's tensors in a saved run
    (the report's own steps keep no histograms)."""
    trainer = run.trainer
    trainer.probe.focus_layer = next((layer.name for layer in trainer.probe.layers if layer.weight_shape), None)
    try:
        pending = trainer.inspect()
        return pending.get() if pending is not None else None
    except Exception:  # a display extra, as the boundary is
        log.debug("no views for the saved run of %s", run.name, exc_info=True)
        return None


def _save(path: str, run: Any, report: dict[str, Any], capture: Any = None) -> None:
    """A run file the app's File → Open run reads like one it saved itself (``capture``: its
    views, ``_final_views``)."""
    import dataclasses

    import torch

    from engine import saved_frame
    from engine.diagnostics import Diagnosis
    from engine.history import History
    from engine.reduce import as_matrix, shrink_2d
    from engine.runfile import save_run
    from engine.snapshot import SAVED_RUN_ID, Metrics, Snapshot
    from engine.views import boundary_view, network_view
    from engine.worker import history_columns

    names = [layer["name"] for layer in report["layers"]]
    columns = history_columns(tuple(names))
    history = History(columns)
    steps = report["steps"]
    index = {c: i for i, c in enumerate(columns)}
    rows = np.full((steps, len(columns)), np.nan)

    def fill(column: str, values: list | None, at: np.ndarray | None = None) -> None:
        if values is not None and column in index:
            numbers = [np.nan if v is None else v for v in values]
            if at is None:
                rows[:, index[column]] = numbers
            else:
                rows[at, index[column]] = numbers

    fill("loss", report["loss"])
    fill("train_acc", report.get("accuracy"))
    validation = report.get("validation") or {}
    at = np.asarray(validation.get("step", []), np.intp) - 1
    fill("val_loss", validation.get("loss"), at)
    fill("val_acc", validation.get("accuracy"), at)
    for layer in report["layers"]:
        for stat in ("grad_norm", "weight_norm", "act_mean", "act_std", "dead_fraction", "saturated_fraction"):
            fill(f"{stat}/{layer['name']}", layer[stat])
    history.append_many(np.arange(1, steps + 1), rows)
    trainer = run.trainer
    modules = dict(trainer.model.named_modules())
    tensors = {}
    shown = None  # the layer whose weights the app shows when it opens the file
    for layer in trainer.probe.layers:
        module = modules.get("" if layer.name == "<model>" else layer.name)
        weight = getattr(module, "weight", None) if module is not None else None
        if isinstance(weight, torch.Tensor) and weight.dim() >= 1:
            tensors[f"weight/{layer.name}"] = shrink_2d(as_matrix(weight.detach())).cpu().float().numpy()
            shown = shown or layer.name
    if capture is not None and capture.tensors is not None:  # (the layer its views were measured for)
        shown = capture.tensors.layer
    # What the app's views draw besides the series: the findings (Health), the metrics and, for 2-D
    # data, the decision boundary at the last step (without them the opened file said "No problems
    # found so far" after a report that found some).
    diagnoses = tuple(Diagnosis(code=d["code"], severity=d["severity"], layers=tuple(d["layers"]), step=d["step"],
                                message=d["message"], fixes=tuple(d["fixes"]), last_step=d["last_step"],
                                evidence={k: math.nan if v is None else v for k, v in d["evidence"].items()})
                      for d in report["diagnoses"])

    def last(values: list | None) -> float | None:
        found = [v for v in values or () if v is not None]
        return found[-1] if found else None

    val_steps = validation.get("step") or []
    loss = last(report["loss"])
    metrics = Metrics(train_loss=math.nan if loss is None else loss,
                      train_acc=last(report.get("accuracy")), val_loss=last(validation.get("loss")),
                      val_acc=last(validation.get("accuracy")), val_step=val_steps[-1] if val_steps else None)
    try:
        boundary = boundary_view(run, steps)
    except Exception:  # a display extra (as in the app): a model that can't take the grid saves none
        log.debug("no decision boundary for %s", run.name, exc_info=True)
        boundary = None
    snapshot = Snapshot(run_id=SAVED_RUN_ID, step=steps, state="paused", scenario=str(run.name),
                        device=str(trainer.device), layers=tuple(trainer.probe.layers), metrics=metrics,
                        hyper=trainer.hyper, stats=capture.frame if capture else None,
                        tensors=capture.tensors if capture else None,
                        network=network_view(run, capture) if capture else None,
                        boundary=boundary, diagnoses=diagnoses)
    description, arrays = saved_frame.encode(snapshot, (capture.frame,) if capture else (), known=tensors)
    config = {**run.config, "name": run.config.get("model_ref") or run.config.get("scenario"),
              "model": None, "step": steps, "device": str(trainer.device), "tensor_layer": shown,
              "layers": [dataclasses.asdict(layer) for layer in trainer.probe.layers], "shown": description}
    save_run(path, config=config, history=history, tensors={**tensors, **arrays}, step=steps)
