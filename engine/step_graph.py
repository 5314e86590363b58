"""A captured step's end-of-step reductions, recorded once as a CUDA graph and then replayed.

On a GPU, a small model's captured step is bound by what each operation costs to dispatch and
launch (15-25 µs on a busy host), not by its kernels: the probe's reductions at the end of a
captured step are about a hundred operations on a few kilobytes. They are the same operations on
tensors of the same shapes step after step, while the step's arrangement holds, so
``StepGraphs`` records them once as a CUDA graph and replays it: one multi-tensor copy of the
step's inputs into the graph's own tensors, one launch, instead of a hundred.

The reductions are a function of their inputs alone (``Probe`` builds it so): every tensor they
read is an input, or a constant made before the recording and held, with the function, for as
long as the recording is kept. An arrangement is recorded the second time it is seen (the first
runs eagerly, which also makes its constants), and its first replay is checked against the same
reductions run eagerly on the same inputs; a recording that fails, or a replay that differs,
turns graphs off for the runner, which then runs every step eagerly and says why once.

Recording synchronises the device (``torch.cuda.graph`` does, and so does the check); a replay
never does.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

__all__ = ["GRAPH_HELD_MAX", "GRAPH_INPUT_MAX", "GRAPH_MEMORY_SHARE", "GRAPH_PARAMS_MAX", "StepGraphs",
           "graph_input_max", "record_cuda_graph", "record_by_rerunning"]

log = logging.getLogger(__name__)

#: Steps whose reductions read at most this many values in all are replayed as graphs, and on
#: CUDA at most 1/GRAPH_MEMORY_SHARE of the GPU's memory in float32 values (``graph_input_max``):
#: a recording keeps a copy of every input for as long as it is kept (``StepGraphs.KEPT`` of them).
#: On an H200 a captured step of the large transformer (outputs of 1M-4M values, 3M parameters)
#: cost 22 ms more than a bare one with this at 4M values, 12 ms at 32M and 5 ms at 128M.
GRAPH_INPUT_MAX = 1 << 27
GRAPH_MEMORY_SHARE = 128
#: An output, or an output's gradient, of more values is reduced in its hook rather than held to
#: the step's end for a graph: a pass over it costs more than the launches a replay saves, and a
#: GPU-bound model's big outputs would only be copied twice more.
GRAPH_HELD_MAX = 1 << 22
#: A model's parameters are left to the step's end (and so to a graph) when its weights and
#: gradients hold at most this many values together.
GRAPH_PARAMS_MAX = 1 << 24


def graph_input_max(device: torch.device, most: int = GRAPH_INPUT_MAX) -> int:
    """The most values a step graph's inputs may hold on ``device`` (``most``, and on CUDA at most
    1/GRAPH_MEMORY_SHARE of the GPU's memory in float32 values)."""
    if device.type != "cuda":
        return most
    return min(most, torch.cuda.get_device_properties(device).total_memory // (4 * GRAPH_MEMORY_SHARE))

Reduction = Callable[[Sequence[torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class Recording:
    """One arrangement's reductions, ready to replay on ``inputs`` (the recording's own tensors)."""

    inputs: list[torch.Tensor]
    output: torch.Tensor  # overwritten by each replay
    replay: Callable[[], None]
    keep: tuple[Any, ...]  # what the replay reads and must outlive it (the graph, the function)


def _own_copies(inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Dense copies (an expanded gradient becomes a tensor of its own)."""
    return [torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t) for t in inputs]


def record_cuda_graph(reduce: Reduction, inputs: Sequence[torch.Tensor]) -> Recording:
    """Record ``reduce`` on copies of ``inputs`` as a CUDA graph (after one warm-up run on a side
    stream, as PyTorch advises: lazy initialisations mustn't happen inside the recording)."""
    static = _own_copies(inputs)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        reduce(static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    # thread_local: only this thread's calls may not sync during the recording (the GUI's don't
    # touch the device, but a user's data-loading thread might).
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        output = reduce(static)
    return Recording(static, output, graph.replay, (graph, reduce))


def record_by_rerunning(reduce: Reduction, inputs: Sequence[torch.Tensor]) -> Recording:
    """A stand-in for ``record_cuda_graph`` on a CPU (tests, op counts): a replay runs ``reduce``
    again on the recording's own tensors, into the same output, as a graph would."""
    static = _own_copies(inputs)
    output = reduce(static)
    return Recording(static, output, lambda: output.copy_(reduce(static)), (reduce,))


@dataclass
class _Kept:
    owner: object  # held, so the id in its key can't be reused while it is kept
    recording: Recording


class StepGraphs:
    """Runs a step's reductions, replaying a recording of them when their arrangement repeats.

    ``run(owner, template, reduce, inputs)``: ``owner`` and ``template`` (hashable) identify the
    arrangement together with the inputs' shapes, dtypes and devices; ``reduce(inputs)`` must
    compute the same from any inputs of that arrangement. The tensor returned by a replay is the
    recording's own output: read or copy it (stream-ordered) before the next step's ``run``.
    """

    KEPT = 4  # recordings kept: steps with and without some output, or a last partial batch, alternate
    _SEEN_MAX = 64

    def __init__(self, record: Callable[[Reduction, Sequence[torch.Tensor]], Recording] = record_cuda_graph) -> None:
        self._record = record
        self._kept: dict[tuple, _Kept] = {}  # newest last
        self._seen: set[tuple] = set()
        self.off_because: str | None = None
        self.recorded = 0
        self.replayed = 0

    def can_record_on(self, device: torch.device) -> bool:
        """Whether this runner's recordings work on ``device`` (CUDA graphs: CUDA only; a stand-in
        recorder: anywhere)."""
        return self._record is not record_cuda_graph or device.type == "cuda"

    def run(self, owner: object, template: tuple, reduce: Reduction, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.off_because is not None:
            return reduce(inputs)
        key = (id(owner), template, tuple((t.shape, t.dtype, t.device) for t in inputs))
        kept = self._kept.pop(key, None)
        if kept is None or kept.owner is not owner:
            if key not in self._seen:  # the first time eagerly: it makes the reductions' constants
                if len(self._seen) >= self._SEEN_MAX:
                    self._seen.clear()
                self._seen.add(key)
                return reduce(inputs)
            try:
                kept = _Kept(owner, self._record(reduce, inputs))
                want = reduce(inputs)
                got = self._replay(kept.recording, inputs)
                if not torch.allclose(got, want, rtol=1e-4, atol=1e-6, equal_nan=True):
                    worst = float((got - want).abs().nan_to_num(float("inf")).max())
                    raise ValueError(f"a replay differed from the same reductions run eagerly (by up to {worst:.3g})")
            except Exception as exc:  # noqa: BLE001 - any failure to record means: run eagerly
                return self._turn_off(exc, reduce, inputs)
            self.recorded += 1
            while len(self._kept) >= self.KEPT:
                self._kept.pop(next(iter(self._kept)))
            self._kept[key] = kept
            return got
        self._kept[key] = kept
        return self._replay(kept.recording, inputs)

    def _replay(self, recording: Recording, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        torch._foreach_copy_(recording.inputs, list(inputs))
        recording.replay()
        self.replayed += 1
        return recording.output

    def _turn_off(self, exc: Exception, reduce: Reduction, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        self.off_because = f"{type(exc).__name__}: {exc}".splitlines()[0]
        log.warning("the probe's reductions run without CUDA graphs from now on (%s)", self.off_because)
        self._kept.clear()
        return reduce(inputs)
