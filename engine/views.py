"""Display views that need the model itself: the network graph and the decision boundary.

Both are computed on the training thread at display rate (not per step) from small tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from engine.modes import eval_mode
from engine.probe import MAX_GRAPH_UNITS, Capture, first_tensor, input_batch_dim
from engine.run import Run
from engine.snapshot import BoundaryView, LayerInfo, NetworkView

__all__ = ["network_view", "boundary_view", "trace_data_flow", "DataFlow", "INPUT", "GRID"]

#: Resolution of the decision-boundary grid (GRID × GRID points of the input plane).
GRID = 64
#: The model's input, as a feeder in a :class:`DataFlow` (no module is named so: names have no "<").
INPUT = "<input>"
_UNIT_DIVISOR = {"LSTM": 4, "GRU": 3, "MultiheadAttention": 3}
# The kinds of layer drawn as columns, by the torch class they are (``LayerInfo.kind``), so a
# subclass of one (MaskedLinear(nn.Linear)) or one under weight_norm/spectral_norm is one too.
_COLUMN_TYPES = ("Linear", "Conv1d", "Conv2d", "Embedding", "RNN", "LSTM", "GRU", "MultiheadAttention",
                 "NonDynamicallyQuantizableLinear", "Bilinear")
_TRACE_EXAMPLES = 8  # the data flow is traced on this many examples of the last batch (all, if that fails)


@dataclass(frozen=True, slots=True)
class DataFlow:
    """Which layers feed each weight layer, as one traced forward pass found them.

    ``feeders[name]`` holds the layers (and :data:`INPUT`) whose outputs the layer's input is
    computed from through operations that are not themselves traced layers: activations, dropout,
    norms, reshapes, a residual ``+``, a ``torch.cat``. A layer missing from it was not called.
    """

    feeders: Mapping[str, frozenset[str]] = field(default_factory=dict)
    error: str | None = None  # why the flow is unknown (the traced forward raised)


def _tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a module's arguments or output (nested tuples, lists and dicts)."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (tuple, list)):
            stack.extend(item)
    return found


def trace_data_flow(model: nn.Module, x: torch.Tensor, names: Sequence[str]) -> DataFlow:
    """Run ``model(x)`` once with autograd recording and find what feeds each layer in ``names``.

    A forward hook keeps each call's input tensors and its output's autograd node; walking back
    from an input through the autograd graph, every path stops at the first traced layer's output
    (or at ``x``) it meets. Autograd sees the operations that hooks can't (``F.relu`` or ``h + x``
    in ``forward``), and a tensor's identity is never guessed from its shape. The model runs in
    eval mode (no batch-norm statistics move, no dropout drawn) and gets its flags back; no
    backward runs, so no gradient changes. Raises whatever the model's forward raises.
    """
    modules = dict(model.named_modules())
    given = x.detach().clone()
    if given.is_floating_point():
        given.requires_grad_(True)
    outputs: dict[int, str] = {}  # id(autograd node of a layer's output) -> the layer
    starts: dict[str, list] = {}  # layer -> autograd nodes of its inputs, every call
    fed_directly: set[str] = set()  # layers given x itself (token ids into an Embedding)
    alive: list = []  # every node whose id is a key: held, so no other node can take its id

    def record(name: str):
        def hook(_module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            nodes = starts.setdefault(name, [])
            for tensor in _tensors((args, kwargs)):
                if tensor is given:
                    fed_directly.add(name)
                elif tensor.grad_fn is not None:
                    nodes.append(tensor.grad_fn)
            for tensor in _tensors(output):
                if tensor.grad_fn is not None:  # (read now: an in-place op after it replaces it)
                    alive.append(tensor.grad_fn)
                    outputs[id(tensor.grad_fn)] = name
        return hook

    handles = []
    try:
        for name in dict.fromkeys(names):
            if name in modules:
                handles.append(modules[name].register_forward_hook(record(name), with_kwargs=True))
        with torch.enable_grad(), eval_mode(model):
            result = model(given)
        feeders = {}
        for name, nodes in starts.items():
            found = {INPUT} if name in fed_directly else set()
            seen: dict[int, Any] = {}
            stack = list(nodes)
            while stack:
                node = stack.pop()
                if node is None or id(node) in seen:
                    continue
                seen[id(node)] = node
                if id(node) in outputs:
                    found.add(outputs[id(node)])
                elif getattr(node, "variable", None) is given:  # (x's own node, AccumulateGrad)
                    found.add(INPUT)
                else:
                    stack.extend(following for following, _ in node.next_functions)
            feeders[name] = frozenset(found)
        del result
    finally:
        for handle in handles:
            handle.remove()
    return DataFlow(feeders=feeders)


def _data_flow(run: Run, names: Sequence[str]) -> DataFlow | None:
    """The run's traced data flow: traced once, on the first call after a batch was seen."""
    if run.data_flow is not None:
        return run.data_flow
    trainer = run.trainer
    batch = trainer.last_batch
    if batch is None:
        return None
    x = batch[0]
    error = None
    for sample in (x[:_TRACE_EXAMPLES], x):  # (a forward may insist on the batch size it trains with)
        try:
            with trainer.probe.suspended():
                run.data_flow = trace_data_flow(trainer.model, sample, names)
            return run.data_flow
        except Exception as exc:  # (user code may raise anything: the graph then draws no links)
            error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
    run.data_flow = DataFlow(error=error)
    return run.data_flow


def _kind(layer: LayerInfo) -> str:
    """The torch class the layer is (``LayerInfo.kind``): a subclass of nn.Linear, or a Linear
    under weight_norm, is drawn as a Linear."""
    return layer.kind or layer.type_name


def _is_column(layer: LayerInfo) -> bool:
    return layer.role != "activation" and _kind(layer) in _COLUMN_TYPES and layer.weight_shape is not None


def _listed(names: Sequence[str]) -> str:
    return " and ".join(names) if len(names) <= 2 else ", ".join(names[:-1]) + " and " + names[-1]


def _shown(key: str) -> str:
    return "input" if key == INPUT else key


def _note(links: Sequence[tuple[str, str, frozenset[str] | None, bool]], order: Sequence[str]) -> str:
    """One line naming the links the columns don't draw.

    ``links``: for every column after the first, (its layer, the column before it, the layer's
    feeders or None if untraced, whether that column is one of them). A layer not fed by its left
    neighbour is named with what does feed it; the extra feeders of a joined layer (skip links: a
    residual stream has many) are counted, with the first two named. A layer that feeds itself
    (one module applied twice in a row, its weights shared) is named too: its one column stands
    for both passes and shows the first.
    """
    rank = {name: i for i, name in enumerate(order)}
    parts, skips = [], []
    for layer, previous, feeders, fed in links:
        if feeders is None:
            parts.append(f"{layer}'s input was not traced: no link into it is drawn")
            continue
        if layer in feeders:
            parts.append(f"{layer} runs again on its own output (shared weights): its column shows its first pass")
        others = sorted(feeders - {layer, previous}, key=lambda name: (rank.get(name, len(rank)), name))
        sources = [_shown(name) for name in others]
        if fed:
            skips += [(source, layer) for source in sources]
        elif not sources:
            parts.append(f"{layer} is fed by no column before it, not {_shown(previous)}: no link into it is drawn")
        else:
            arrows = _listed([f"{source} → {layer}" for source in sources])
            parts.append(f"{layer} is fed by {_listed(sources)}, not {_shown(previous)}: {arrows} "
                         f"{'is' if len(sources) == 1 else 'are'} not drawn")
    if len(skips) == 1:
        source, layer = skips[0]
        parts.append(f"{layer} is also fed by {source}: {source} → {layer} is not drawn")
    elif skips:
        examples = ", ".join(f"{source} → {layer}" for source, layer in skips[:2])
        parts.append(f"{len(skips)} skip links are not drawn ({examples}, …)")
    return "; ".join(parts)


def network_view(run: Run, capture: Capture | None) -> NetworkView:
    """Columns of units: the input, then every weight layer in the order they ran, valued by the
    focus example.

    A weight layer's units take the output of the activation that follows it (if any) so the
    graph shows what the next layer receives. Neighbouring columns are joined only where the
    traced data flow (:func:`trace_data_flow`) says the left one feeds the right one: a second
    head fed by the trunk, not by the first head, is drawn unjoined, and ``note`` names the links
    that exist but are not drawn (a skip connection's, a head's), so the picture is never a chain
    the model does not have.
    """
    trainer = run.trainer
    # (No capture yet, as through a run's first phase-by-phase step: the columns alone, unvalued
    # and joined by bands, so the phase the step is at can still be shown.)
    unit_values = capture.unit_values if capture is not None else {}
    unit_grads = capture.unit_grads if capture is not None else {}
    graph_weights = capture.graph_weights if capture is not None else {}
    layers = [layer for layer in trainer.probe.layers if layer.called]
    columns = [(position, layer) for position, layer in enumerate(layers) if _is_column(layer)]
    flow = _data_flow(run, [layer.name for _, layer in columns])
    keys: list[str] = []  # what feeds each column: INPUT, or its layer's name
    names, sizes, acts, grads, weights, connected, links = [], [], [], [], [], [], []
    batch = trainer.last_batch
    if batch is not None:
        x, along = batch[0], input_batch_dim(*batch)
        example = x.select(along, min(trainer.probe.focus_example, x.shape[along] - 1))
        keys.append(INPUT)
        names.append("input")
        sizes.append(int(example.numel()))
        drawn = x.is_floating_point() and example.numel() <= MAX_GRAPH_UNITS
        acts.append(example.detach().reshape(-1).float().cpu().numpy() if drawn else None)
        grads.append(None)
    for position, layer in columns:
        # (An Embedding's units are its embedding dimensions; its weight's rows are tokens.)
        kind = _kind(layer)
        size = layer.weight_shape[1] if kind == "Embedding" else layer.weight_shape[0] // _UNIT_DIVISOR.get(kind, 1)
        shown = layer.name
        following = layers[position + 1] if position + 1 < len(layers) else None
        if following is not None and following.role == "activation":
            shown = following.name
        value = unit_values.get(shown, unit_values.get(layer.name))
        grad = unit_grads.get(shown, unit_grads.get(layer.name))
        if keys:  # the link from the column before it
            feeders = None if flow is None or flow.error else flow.feeders.get(layer.name)
            fed = feeders is not None and keys[-1] in feeders
            weight = graph_weights.get(layer.name) if fed else None
            if weight is not None and weight.shape[1] != sizes[-1]:
                weight = None  # not a dense map from the previous column's units (e.g. after a cat)
            weights.append(weight)
            connected.append(fed)
            links.append((layer.name, keys[-1], feeders, fed))
        keys.append(layer.name)
        names.append(layer.name)
        sizes.append(int(size))
        acts.append(value if value is not None and value.size == size else None)
        grads.append(grad if grad is not None and grad.size == size else None)
    if flow is None or flow.error:
        why = f" ({flow.error})" if flow is not None else ""
        note = f"The data flow could not be traced{why}: no links are drawn" if connected else ""
    else:
        note = _note(links, keys)
    step = capture.frame.step if capture is not None else trainer.step_count
    return NetworkView(step=step, column_names=tuple(names), column_sizes=tuple(sizes),
                       activations=tuple(acts), gradients=tuple(grads), weights=tuple(weights),
                       connected=tuple(connected), note=note)


@torch.no_grad()
def boundary_view(run: Run, step: int) -> BoundaryView | None:
    """The model's prediction over a grid covering the 2-D data, plus one hidden layer's units."""
    if run.boundary_data is None:
        return None
    points, labels = run.boundary_data
    trainer = run.trainer
    model = trainer.model
    lo = points.min(axis=0)
    hi = points.max(axis=0)
    pad = 0.1 * (hi - lo) + 1e-6
    x0, y0 = lo - pad
    x1, y1 = hi + pad
    xs = torch.linspace(float(x0), float(x1), GRID)
    ys = torch.linspace(float(y0), float(y1), GRID)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    # (in the model's own floating type: a float64 model takes no float32 grid)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1).to(trainer.device, dtype)
    hidden_layer = next((info for info in trainer.probe.layers if info.role == "activation" and info.called), None)
    captured: dict[str, torch.Tensor] = {}
    handle = None
    if hidden_layer is not None:
        module = dict(model.named_modules())[hidden_layer.name]
        handle = module.register_forward_hook(
            lambda _m, _a, out: captured.__setitem__("hidden", first_tensor(out)))
    try:
        with trainer.probe.suspended(), eval_mode(model):
            out = model(grid).float()
    finally:
        if handle is not None:
            handle.remove()
    if out.dim() == 2 and out.shape[1] >= 2:
        probs = torch.softmax(out, dim=1)
        prediction = probs[:, 1] if out.shape[1] == 2 else probs.argmax(dim=1).float()
    else:
        prediction = torch.sigmoid(out.reshape(-1))
    hidden = None
    if "hidden" in captured and captured["hidden"].dim() == 2:
        units = captured["hidden"][:, :16]
        hidden = units.T.reshape(-1, GRID, GRID).cpu().numpy().astype(np.float32)
    return BoundaryView(
        step=step, extent=(float(x0), float(x1), float(y0), float(y1)),
        prediction=prediction.reshape(GRID, GRID).cpu().numpy().astype(np.float32),
        n_classes=max(2, int(out.shape[1]) if out.dim() == 2 else 2), points=points, labels=labels,
        hidden=hidden, hidden_layer=hidden_layer.name if hidden_layer else None,
        hidden_units=int(captured["hidden"].shape[1]) if hidden is not None else 0,
    )
