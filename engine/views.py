"""Display views that need the model itself: the network graph and the decision boundary.

Both are computed on the training thread at display rate (not per step) from small tensors.
"""
from __future__ import annotations

import numpy as np
import torch

from engine.probe import MAX_GRAPH_UNITS, Capture, first_tensor
from engine.run import Run
from engine.snapshot import BoundaryView, NetworkView

__all__ = ["network_view", "boundary_view", "GRID"]

#: Resolution of the decision-boundary grid (GRID × GRID points of the input plane).
GRID = 64
_UNIT_DIVISOR = {"LSTM": 4, "GRU": 3, "MultiheadAttention": 3}
_COLUMN_TYPES = ("Linear", "Conv1d", "Conv2d", "Embedding", "RNN", "LSTM", "GRU", "MultiheadAttention",
                 "NonDynamicallyQuantizableLinear", "Bilinear")


def network_view(run: Run, capture: Capture) -> NetworkView:
    """Columns of units: the input, then every weight layer, valued by the focus example.

    A weight layer's units take the output of the activation that follows it (if any) so the
    graph shows what the next layer receives.
    """
    trainer = run.trainer
    layers = [layer for layer in trainer.probe.layers if layer.called]
    names, sizes, acts, grads, weights = [], [], [], [], []
    batch = trainer.last_batch
    if batch is not None and batch[0].is_floating_point() and batch[0][0].numel() <= MAX_GRAPH_UNITS:
        example = batch[0][min(trainer.probe.focus_example, len(batch[0]) - 1)]
        names.append("input")
        sizes.append(int(example.numel()))
        acts.append(example.detach().reshape(-1).float().cpu().numpy())
        grads.append(None)
    elif batch is not None:
        names.append("input")
        sizes.append(int(batch[0][0].numel()))
        acts.append(None)
        grads.append(None)
    for position, layer in enumerate(layers):
        if layer.role == "activation" or layer.type_name not in _COLUMN_TYPES or layer.weight_shape is None:
            continue
        size = layer.weight_shape[0] // _UNIT_DIVISOR.get(layer.type_name, 1)
        shown = layer.name
        following = layers[position + 1] if position + 1 < len(layers) else None
        if following is not None and following.role == "activation":
            shown = following.name
        value = capture.unit_values.get(shown, capture.unit_values.get(layer.name))
        grad = capture.unit_grads.get(shown, capture.unit_grads.get(layer.name))
        weight = capture.graph_weights.get(layer.name)
        if weight is not None and names and weight.shape[1] != sizes[-1]:
            weight = None  # not a dense map from the previous column (e.g. a residual branch)
        names.append(layer.name)
        sizes.append(int(size))
        acts.append(value if value is not None and value.size == size else None)
        grads.append(grad if grad is not None and grad.size == size else None)
        weights.append(weight)
    if len(weights) == len(names):  # no input column
        weights = weights[1:]
    return NetworkView(step=capture.frame.step, column_names=tuple(names), column_sizes=tuple(sizes),
                       activations=tuple(acts), gradients=tuple(grads), weights=tuple(weights))


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
    was_training = model.training
    model.eval()
    try:
        with trainer.probe.suspended():
            out = model(grid).float()
    finally:
        model.train(was_training)
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
