"""How many PyTorch operations the probe's GPU path dispatches per step, counted on any machine.

On a GPU, the steps of small models are bound by what each operation costs to dispatch and
launch (several microseconds), not by the kernels themselves; the number of operations a captured
step adds is then what the probe costs. This counts them without a GPU: the probe runs its
device path (``ProbeConfig(host_statistics=False)``, the PyTorch reductions CUDA uses) on the
CPU, the optimizer uses its multi-tensor (foreach) implementation as on CUDA, and a
``TorchDispatchMode`` counts every operation that reaches a kernel or a view.

Prints per configuration: ops of a bare step, what a capture adds, what views add (one
example's feature maps or attention), the every-16-steps ratio in ops, and the maps ratio in ops,
against the issue's time targets (<= 1.05 every 16 steps, <= 1.10 for maps). A count is exact and
repeatable, so this needs no blocks or medians. Then the memory traffic: megabytes a bare step's
kernels read and write (tensor arguments and results), a captured step's as a multiple of it, and
the operations that add most: on a big model, whose GPU step is bound by memory rather than by
launches, this is what a capture costs.

By default the steps are counted as CUDA runs them, with step graphs (``ProbeConfig.step_graphs``):
the end-of-step reductions are recorded once and each captured step then dispatches one copy of
its inputs and one graph launch for them (counted as ``graph_launch``); ``--no-step-graphs``
counts them run eagerly. On the CPU a stand-in replays
the recording by running it again (``engine.step_graph.record_by_rerunning``); the operations it
runs are not counted as dispatched, but their memory traffic is, as a graph's kernels move it too.

Usage: python bench/probe_ops.py [--only NAME ...] [--json PATH] [--no-step-graphs]
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe_overhead import CONFIGS, Config, make_dataset, make_trainer  # noqa: E402

from engine.step_graph import Recording, StepGraphs, record_by_rerunning  # noqa: E402
from engine.trainer import Trainer  # noqa: E402

# Operations that only make a new view or alias of a tensor: dispatched, but launch no kernel.
VIEWS = {"view", "_unsafe_view", "detach", "alias", "slice", "select", "unsqueeze", "squeeze", "t", "transpose",
         "permute", "expand", "as_strided", "split", "split_with_sizes", "unbind", "reshape", "narrow",
         "_reshape_alias"}


# Operations that gather values of their first argument by an index.
GATHERS = {"index", "index_select", "gather", "take"}


class OpCounter(TorchDispatchMode):
    """Counts operations, and the bytes of the tensors each kernel-launching one reads or writes
    (its tensor arguments and results: a GPU-bound step's cost is roughly the memory it moves; a
    gather's, the values it takes, twice, and its indices)."""

    active: "OpCounter | None" = None  # the counter of the step being counted

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.bytes: collections.Counter[str] = collections.Counter()
        self.replaying = False  # operations of a stand-in graph replay: traffic, but no dispatch

    def __enter__(self) -> "OpCounter":
        OpCounter.active = self
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        OpCounter.active = None
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.replaying:
            self.ops[name] += 1
        out = func(*args, **(kwargs or {}))
        if name in GATHERS:  # reads what it gathers (and the indices), not its whole source
            self.bytes[name] += 2 * _bytes(out) + sum(_bytes(t) for t in tree_flatten((args[1:], kwargs))[0])
        elif name not in VIEWS:
            self.bytes[name] += sum(_bytes(t) for t in tree_flatten((args, kwargs, out))[0])
        return out


def _bytes(t: object) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def record_counted(reduce, inputs) -> Recording:
    """``record_by_rerunning``, whose replays count as one launch (and their kernels' traffic)."""
    recording = record_by_rerunning(reduce, inputs)

    def replay() -> None:
        counter = OpCounter.active
        if counter is None:
            recording.replay()
            return
        counter.ops["graph_launch"] += 1
        counter.replaying = True
        try:
            recording.replay()
        finally:
            counter.replaying = False

    return dataclasses.replace(recording, replay=replay)


def count_step(trainer: Trainer, capture: bool, tensors: bool) -> OpCounter:
    with OpCounter() as counter:
        result = trainer.step(capture=capture, tensors=tensors)
    if result.capture is not None:
        result.capture.get()
    return counter


def measure(config: Config, step_graphs: bool = True) -> dict:
    trainer = make_trainer(config, make_dataset(config.data), "cpu", torch_stats=True)
    probe = trainer.probe
    probe.config = dataclasses.replace(probe.config, step_graphs=step_graphs)
    if step_graphs:
        probe.graphs = StepGraphs(record_counted)
    layers = probe.layers
    if config.maps_layer_kind == "attention":
        probe.focus_layer = next(info.name for info in layers if info.role == "attention")
    elif config.maps_layer_kind == "conv":
        probe.focus_layer = next(info.name for info in layers if info.weight_shape and len(info.weight_shape) == 4)
    else:
        probe.focus_layer = layers[0].name
    modes = {"bare": (False, False), "captured": (True, False), "maps": (True, True)}
    # The first capture fixes the layer order; with step graphs an arrangement is recorded the
    # second time it is seen (after that order is fixed).
    for capture, tensors in list(modes.values()) * 3:
        count_step(trainer, capture, tensors)
    counters = {mode: count_step(trainer, *flags) for mode, flags in modes.items()}
    trainer.close()
    counts = {mode: counter.ops for mode, counter in counters.items()}
    moved = {mode: sum(counter.bytes.values()) for mode, counter in counters.items()}
    total = {mode: sum(c.values()) for mode, c in counts.items()}
    kernels = {mode: sum(n for op, n in c.items() if op not in VIEWS) for mode, c in counts.items()}
    return {
        "config": config.name, "bare_ops": total["bare"], "bare_kernels": kernels["bare"],
        "capture_ops": total["captured"] - total["bare"], "capture_kernels": kernels["captured"] - kernels["bare"],
        "maps_ops": total["maps"] - total["captured"],
        "every_16_ops": round((15 * total["bare"] + total["captured"]) / (16 * total["bare"]), 3),
        "maps_ratio_ops": round(total["maps"] / total["captured"], 3),
        "top_capture_ops": dict((counts["captured"] - counts["bare"]).most_common(8)),
        "bare_mb": round(moved["bare"] / 1e6, 1),
        "captured_mb_ratio": round(moved["captured"] / moved["bare"], 2),
        "top_capture_mb": {op: round(n / 1e6, 1) for op, n in
                           (counters["captured"].bytes - counters["bare"].bytes).most_common(6)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="config names")
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--step-graphs", action=argparse.BooleanOptionalAction, default=True,
                        help="end-of-step reductions replayed as graphs (the default, as on CUDA)")
    args = parser.parse_args()
    header = f"{'config':<18} {'bare ops':>8} {'(kern)':>7} {'capture +':>9} {'(kern)':>7} {'maps +':>7} " \
             f"{'every16':>8} {'maps':>6} {'bare MB':>8} {'capt x':>8}  capture adds most MB"
    graphs = ", end-of-step reductions replayed as CUDA graphs" if args.step_graphs else ""
    print(f"torch {torch.__version__}; the GPU path's operations, counted on the CPU{graphs}")
    print(header)
    print("-" * len(header))
    rows = []
    for config in CONFIGS:
        if config.cuda_only and not (args.only and config.name in args.only):
            continue  # (counting is exact at any size, but these take long on a CPU)
        if args.only and config.name not in args.only:
            continue
        row = measure(config, args.step_graphs)
        rows.append(row)
        maps = f"{row['maps_ratio_ops']:.3f}" if config.maps_layer_kind != "none" else "—"
        print(f"{row['config']:<18} {row['bare_ops']:>8} {row['bare_kernels']:>7} {row['capture_ops']:>9} "
              f"{row['capture_kernels']:>7} {row['maps_ops']:>7} {row['every_16_ops']:>8.3f} {maps:>6} "
              f"{row['bare_mb']:>8.1f} {row['captured_mb_ratio']:>7.2f}x  "
              + ", ".join(f"{op} {mb:.0f}" for op, mb in list(row["top_capture_mb"].items())[:3]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
