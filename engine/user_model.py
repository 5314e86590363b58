"""Bring your own model: load ``path/to/file.py:function`` and check it before training.

The function takes no arguments and returns ``(model, (X, y), loss_fn)`` or
``(model, data_loader, loss_fn)``, optionally with validation data as a fourth item: ``(X_val,
y_val)`` or a loader of it. Everything that can go wrong in the user's code becomes a
:class:`UserModelError` whose message is one line naming the problem and where it happened
(``file:line`` when known), so the app can show it as it is and stay alive.
"""
from __future__ import annotations

import collections.abc
import functools
import importlib.machinery
import importlib.util
import inspect
import itertools
import logging
import math
import multiprocessing
import os
import re
import sys
import sysconfig
import traceback
import types
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.diagnostics import Diagnosis, Thresholds, before_training
from engine.modes import eval_mode, training_modes
from engine.probe import CHANNELS_FIRST_1D, input_batch_dim
from engine.trainer import BATCH_OF_ONE_HINT, TrainerConfig

__all__ = ["UserModel", "UserModelError", "FirstBatchCheck", "load_user_model", "validate_user_model",
           "check_user_model", "input_scale_finding", "loader_boundary_sample", "BOUNDARY_SAMPLE",
           "INPUT_SCALE_EXAMPLES"]

logger = logging.getLogger(__name__)

_EXPECTED = ("expected (model, (X, y), loss_fn) or (model, data_loader, loss_fn), optionally with validation "
             "data (X_val, y_val) or a loader of it as a fourth item")
#: At most this many validation examples are read from a validation loader (the trainer's limit).
VAL_MAX_EXAMPLES = TrainerConfig().val_max_examples
_MAX_MESSAGE = 400
# Torch's RuntimeErrors about incompatible shapes, as opposed to other failures in a forward.
_SHAPE_WORDS = re.compile(r"shape|size|dimension|channels|mat1|mat2", re.IGNORECASE)
# torch's words for tensors of different dtypes meeting (float64 data and a float32 Linear, float
# indices into an Embedding): looked for before the shape words, since "mat1 and mat2" is in both.
_DTYPE_WORDS = re.compile(r"dtype|scalar types?\b|\btype \((?:double|float|half|bfloat16|long|int)\)",
                          re.IGNORECASE)
# Frames in these folders are never "the user's code": torch, this engine, installed packages
# and the standard library.
_LIBRARY_DIRS = tuple(
    os.path.join(os.path.abspath(folder), "")
    for folder in {
        os.path.dirname(os.path.abspath(torch.__file__)),
        os.path.dirname(os.path.abspath(__file__)),
        *(sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")),
    }
)
#: Most examples of a data loader taken for the decision boundary (``loader_boundary_sample``).
BOUNDARY_SAMPLE = 2000
#: Most examples of the tensor form's X whose features the input-scale check measures.
INPUT_SCALE_EXAMPLES = 100_000
_module_numbers = itertools.count()
_MODULE_PREFIX = "_glassbox_user_"  # model files are imported as _glassbox_user_<n>_<stem>


class UserModelError(ValueError):
    """One clear line naming the problem in a user's model file and where (file:line when known)."""


@dataclass(frozen=True, slots=True)
class UserModel:
    """A user's model, data and loss, as their function returned them."""

    ref: str  # "path/to/file.py:function", the path made absolute
    model: nn.Module
    loss_fn: Callable
    x: torch.Tensor | None = None  # tensor form
    y: torch.Tensor | None = None
    loader: Iterable | None = None  # loader form: yields (x, y) batches
    val: tuple[torch.Tensor, torch.Tensor] | None = None  # held-out (X_val, y_val), when the function gave some


@dataclass(frozen=True, slots=True)
class FirstBatchCheck:
    """What running a user's model on its first batch found, short of an error."""

    warnings: tuple[str, ...]  # what PyTorch warned of, one line each
    findings: tuple[Diagnosis, ...]  # engine.diagnostics findings before training (input_scale...)


# ----------------------------------------------------------------------------------------- helpers


def _one_line(text: object) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 3] + "..."


def _error_text(exc: BaseException) -> str:
    message = _one_line(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _same_file(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def _user_location(tb: types.TracebackType | None, path: str | None) -> str | None:
    """``file:line`` of the innermost traceback frame in the user's code.

    The user's own file wins; failing that, the innermost frame outside the libraries (a helper
    module next to the user's file, say).
    """
    frames = traceback.extract_tb(tb)
    for frame in reversed(frames):
        if _same_file(frame.filename, path):
            return f"{frame.filename}:{frame.lineno}"
    for frame in reversed(frames):
        name = os.path.abspath(frame.filename) if not frame.filename.startswith("<") else ""
        if name and not name.startswith(_LIBRARY_DIRS):
            return f"{frame.filename}:{frame.lineno}"
    return None


def _definition(obj: Any) -> str | None:
    """``file:line`` where a function (or a callable object's class) is defined."""
    target = obj
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = getattr(type(obj), "forward", None) or getattr(type(obj), "__call__", None)
    try:
        code = inspect.unwrap(target).__code__
    except (AttributeError, ValueError, TypeError):
        return None
    return f"{code.co_filename}:{code.co_firstlineno}"


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, (tuple, list)):
        noun = "item" if len(value) == 1 else "items"
        return f"a {type(value).__name__} of {len(value)} {noun}"
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return _a(type(value).__name__)


def _split_ref(ref: str) -> tuple[str, str]:
    # rpartition: a Windows path has a colon of its own.
    path, sep, function = ref.rpartition(":")
    if not sep or not path.endswith(".py") or not function.isidentifier():
        raise UserModelError(f"{ref}: expected 'path/to/file.py:function'")
    return path, function


def _ref_path(ref: str) -> str | None:
    try:
        return os.path.abspath(_split_ref(ref)[0])
    except UserModelError:
        return None


def _several_tensors(value: Any) -> str | None:
    """'a tuple of 2 tensors' when ``value`` is a tuple, list or dict holding only tensors, else None."""
    parts = list(value.values()) if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else None
    if not parts or not all(isinstance(part, torch.Tensor) for part in parts):
        return None
    return f"a {type(value).__name__} of {len(parts)} tensor{'s' if len(parts) != 1 else ''}"


def _check_examples(where: str, x: Any, y: Any, x_name: str, y_name: str, loader: bool = False) -> None:
    """X and y are tensors with one example per row each, all finite.

    The tensor form's examples are stacked along the first dimension of both (it is sliced
    there). A ``loader``'s batch may hold them along another dimension of ``x`` that the targets
    name (``engine.probe.input_batch_dim``): time first, (T, N, ...) with targets of (N, ...).
    """
    several_x, several_y = _several_tensors(x), _several_tensors(y)
    if several_x:
        raise UserModelError(
            f"{where}: {x_name} is {several_x}; Glassbox feeds the model one input tensor: join them into one "
            "(torch.cat along the features) and split it again in forward"
        )
    if several_y:
        raise UserModelError(
            f"{where}: {y_name} is {several_y}; Glassbox hands loss_fn one target tensor: join them into one "
            "(torch.cat along the features) and split it again in loss_fn"
        )
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        raise UserModelError(
            f"{where}: {x_name} and {y_name} must be torch tensors; "
            f"got {type(x).__name__} and {type(y).__name__}"
        )
    if x.dim() == 0 or y.dim() == 0:
        raise UserModelError(
            f"{where}: {x_name} and {y_name} need a first dimension of examples; "
            f"got shapes {tuple(x.shape)} and {tuple(y.shape)}"
        )
    dim = input_batch_dim(x, y) if loader else 0
    if dim == 0 and x.shape[0] != y.shape[0]:
        shapes = f"shapes {tuple(x.shape)} and {tuple(y.shape)}"
        if not loader:
            raise UserModelError(
                f"{where}: {x_name} has {x.shape[0]} examples but {y_name} has {y.shape[0]} ({shapes}); "
                "examples are stacked along the first dimension of both"
            )
        raise UserModelError(
            f"{where}: {x_name} has {x.shape[0]} examples along its first dimension but {y_name} has {y.shape[0]} "
            f"({shapes}); stack the examples along x's first dimension, or time first: x of (T, N, ...) with "
            "y of (N, ...)"
        )
    if x.shape[dim] == 0:
        raise UserModelError(f"{where}: {x_name} and {y_name} hold no examples")
    for name, tensor in ((x_name, x), (y_name, y)):
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        n_nan = int(torch.isnan(tensor).sum())
        n_inf = int(torch.isinf(tensor).sum())
        if n_nan or n_inf:
            raise UserModelError(
                f"{where}: {name} contains non-finite values: {n_nan} NaN, {n_inf} Inf "
                f"(of {tensor.numel()})"
            )


# ----------------------------------------------------------------------------------------- loading


class _SourceLoader(importlib.machinery.SourceFileLoader):
    """Compiles from source every time: an edited file is never shadowed by a stale .pyc
    (whose check has one-second resolution), and the user's folder gets no __pycache__."""

    def get_code(self, fullname: str) -> types.CodeType:
        return self.source_to_code(self.get_data(self.path), self.path)


def load_user_model(ref: str, seed: int | None = None) -> UserModel:
    """Import ``path/to/file.py`` under a unique module name and call ``function()``.

    The file's folder leads ``sys.path`` while it is imported and called, so it may import
    modules that sit next to it; it then stays on the path (at its end), since the model's
    forward or the data loader may import them later. With ``seed``, the function runs with
    PyTorch's random generators seeded (the caller's stream untouched), so its weights and data
    are the same run after run.

    Raises:
        UserModelError: anything wrong with the reference, the file, or what the function returns.
    """
    path, function = _split_ref(ref)
    if not os.path.exists(path):
        raise UserModelError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise UserModelError(f"{path}: is not a file")
    path = os.path.abspath(path)
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    module_name = f"{_MODULE_PREFIX}{next(_module_numbers)}_{stem}"
    loader = _SourceLoader(module_name, path)
    spec = importlib.util.spec_from_file_location(module_name, path, loader=loader)
    assert spec is not None  # a .py path with a loader always gives a spec
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(path)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    # Registered before running, as a normal import does: dataclasses and pickling look it up.
    sys.modules[module_name] = module
    ok = False
    try:
        try:
            loader.exec_module(module)
        except SyntaxError as exc:
            where = f"{exc.filename or path}:{exc.lineno}" if exc.lineno else (exc.filename or path)
            raise UserModelError(f"{where}: syntax error: {_one_line(exc.msg)}") from None
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # (user code may raise any kind)
            where = _user_location(exc.__traceback__, path) or path
            raise UserModelError(f"{where}: {_error_text(exc)} while importing the file") from exc
        fn = getattr(module, function, None)
        if fn is None:
            names = sorted(
                name
                for name, value in vars(module).items()
                if inspect.isfunction(value) and value.__module__ == module_name
            )
            found = f"functions in the file: {', '.join(names)}" if names else "the file defines no functions"
            raise UserModelError(f"{path}: no function {function!r} ({found})")
        if not callable(fn):
            raise UserModelError(f"{path}: {function!r} is {_describe(fn)}, not a function")
        try:
            with torch.random.fork_rng(devices=[]):
                if seed is not None:
                    torch.manual_seed(seed)
                result = fn()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # (user code may raise any kind)
            where = _user_location(exc.__traceback__, path) or _definition(fn) or path
            raise UserModelError(f"{where}: {function}() raised {_error_text(exc)}") from exc
        user_model = _unpack(f"{path}:{function}", path, function, result)
        ok = True
        logger.info("loaded user model %s (%s)", user_model.ref, type(user_model.model).__name__)
        return user_model
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
            if ok:  # behind everything else now, so it can't shadow what the app imports later
                sys.path.append(folder)
        if not ok:
            sys.modules.pop(module_name, None)


def _unpack(ref: str, path: str, function: str, result: Any) -> UserModel:
    where = path
    if not isinstance(result, (tuple, list)) or len(result) not in (3, 4):
        raise UserModelError(f"{where}: {function}() returned {_describe(result)}; {_EXPECTED}")
    model, data, loss_fn = result[:3]
    val = _validation_data(where, function, result[3]) if len(result) == 4 else None
    if not isinstance(model, nn.Module):
        raise UserModelError(
            f"{where}: {function}() returned {_describe(model)} as the model; expected a torch.nn.Module"
        )
    if not any(p.requires_grad for p in model.parameters()):
        what = "every parameter frozen (requires_grad=False)" if any(True for _ in model.parameters()) \
            else "no parameters"
        raise UserModelError(f"{where}: {function}() returned a model with {what}: there is nothing to train")
    if not callable(loss_fn):
        raise UserModelError(
            f"{where}: {function}() returned {_describe(loss_fn)} as loss_fn; expected a callable "
            "(output, target) -> scalar tensor"
        )
    if _tensor_form(data):
        x, y = data
        _check_examples(where, x, y, "X", "y")
        if val is not None and (val[0].shape[1:] != x.shape[1:] or val[1].shape[1:] != y.shape[1:]):
            raise UserModelError(
                f"{where}: the validation data's examples are shaped X_val {tuple(val[0].shape[1:])}, "
                f"y_val {tuple(val[1].shape[1:])}, the training data's X {tuple(x.shape[1:])}, y {tuple(y.shape[1:])}")
        return UserModel(ref=ref, model=model, loss_fn=loss_fn, x=x, y=y, val=val)
    if isinstance(data, torch.Tensor) or isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise UserModelError(
            f"{where}: {function}() returned {_describe(data)} as data; "
            "expected (X, y) tensors or an iterable of (x, y) batches"
        )
    return UserModel(ref=ref, model=model, loss_fn=loss_fn, loader=data, val=val)


def _tensor_form(data: Any) -> bool:
    """Whether ``data`` is the tensor form (X, y), not an iterable of batches.

    A pair of batches, each itself (x, y) (or a dict), is a (tiny) loader; a pair of which one
    part is a tensor and the other a tuple, list or dict is (X, y) with several inputs or targets,
    which ``_check_examples`` turns down."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        return False
    grouped = [isinstance(part, (tuple, list, dict)) for part in data]
    return not all(grouped)


def _validation_data(where: str, function: str, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The fourth item a model function returned: (X_val, y_val) tensors, or an iterable of
    (x, y) batches of which the first ``VAL_MAX_EXAMPLES`` examples are read (joined once, here).

    The batches are joined along their first dimension, as the trainer reads the validation set:
    a loader's time-first batches (x of (T, N, ...), see ``_check_examples``) are turned down."""
    if _tensor_form(data):
        _check_examples(where, data[0], data[1], "X_val", "y_val")
        return data[0], data[1]
    if isinstance(data, (torch.Tensor, str, bytes)) or not hasattr(data, "__iter__"):
        raise UserModelError(f"{where}: {function}() returned {_describe(data)} as validation data; "
                             "expected (X_val, y_val) tensors or an iterable of (x, y) batches")
    _check_workers(where, data)
    xs, ys, count = [], [], 0
    try:
        for batch in data:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise UserModelError(f"{where}: the validation loader yielded {_describe(batch)}; "
                                     "expected (x, y) batches")
            x, y = batch
            _check_examples(where, x, y, "the validation batch's x", "the validation batch's y", loader=True)
            if input_batch_dim(x, y) != 0:
                raise UserModelError(
                    f"{where}: the validation loader's batches are time first (x of shape {tuple(x.shape)}, "
                    f"y of shape {tuple(y.shape)}), and Glassbox joins validation batches along x's first "
                    "dimension: collate them batch first, or leave the validation data out")
            xs.append(x)
            ys.append(y)
            count += len(x)
            if count >= VAL_MAX_EXAMPLES:
                break
    except UserModelError:
        raise
    except Exception as exc:
        raise UserModelError(f"{where}: the validation loader raised {_error_text(exc)}") from exc
    if not xs:
        raise UserModelError(f"{where}: the validation loader yielded no batches")
    try:
        x, y = torch.cat(xs)[:VAL_MAX_EXAMPLES], torch.cat(ys)[:VAL_MAX_EXAMPLES]
    except RuntimeError as exc:
        raise UserModelError(f"{where}: the validation loader's batches don't stack: {_one_line(exc)}") from exc
    return x, y


# ----------------------------------------------------------------------------------------- checking


def _first_batch(um: UserModel, where: str, path: str | None, batch_size: int) -> tuple[Any, Any]:
    if um.x is not None and um.y is not None:
        return um.x[:batch_size], um.y[:batch_size]
    if um.loader is None:
        raise UserModelError(f"{where}: no data: neither (X, y) tensors nor a data loader")
    _check_workers(where, um.loader)
    try:
        batch = next(iter(um.loader))
    except StopIteration:
        raise UserModelError(f"{where}: the data loader yielded no batches") from None
    except Exception as exc:
        at = _user_location(exc.__traceback__, path) or where
        raise UserModelError(f"{at}: the data loader raised {_error_text(exc)}") from exc
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise UserModelError(f"{where}: the data loader yielded {_describe(batch)}; expected (x, y) batches")
    _check_examples(where, batch[0], batch[1], "the batch's x", "the batch's y", loader=True)
    return batch[0], batch[1]


def _check_workers(where: str, loader: Any) -> None:
    """A DataLoader whose worker processes are spawned (the default on macOS and Windows) can't
    unpickle anything defined in the model file: it lives in a module only this process has."""
    if not getattr(loader, "num_workers", 0):
        return
    context = getattr(loader, "multiprocessing_context", None)
    method = context.get_start_method() if context is not None else (
        multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0])
    if method == "fork":
        return
    parts = [getattr(loader, "dataset", None), getattr(loader, "collate_fn", None),
             getattr(loader, "worker_init_fn", None)]
    for part in parts:
        owner = part if inspect.isfunction(part) else type(part)  # a function, or an object's class
        if str(getattr(owner, "__module__", "")).startswith(_MODULE_PREFIX):
            raise UserModelError(
                f"{where}: the data loader starts its {loader.num_workers} worker processes with {method!r}, "
                f"and they can't import {owner.__qualname__} from a file Glassbox loaded: use num_workers=0, "
                "or move it into a module next to the file and import it from there")


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return None


def validate_user_model(um: UserModel, batch_size: int = 64) -> tuple[str, ...]:
    """The warnings of :func:`check_user_model` (which see), raising as it does."""
    return check_user_model(um, batch_size).warnings


def check_user_model(um: UserModel, batch_size: int = 64, thresholds: Thresholds = Thresholds()) -> FirstBatchCheck:
    """Run one batch forward and through the loss, and check the loss.

    The model runs in eval mode (so batch-norm statistics are left alone) and gets its
    training flags back afterwards. Gradients are on, as in a training step (no backward runs and
    no parameter gets a gradient), so the graph tells whether the loss depends on the parameters;
    it is let go once that is known.

    Returns:
        the distinct warnings (``UserWarning`` and ``RuntimeWarning``, one line each) that the
        forward and the loss raised: torch's "target size ... different to the input size" here
        means a loss broadcasting its target, a mistake that trains without an error; and the
        findings of the checks that run before training (see ``engine.diagnostics``):
        ``probabilities_to_logit_loss`` and ``input_scale``.

    Raises:
        UserModelError: a shape mismatch, an exception in the forward or loss, a batch norm that
            would meet a batch of one example in training mode, a loss that is not a scalar, a
            loss that is NaN or Inf, or one that doesn't depend on the model's parameters.
    """
    path = _ref_path(um.ref)
    where = path or um.ref
    x, y = _first_batch(um, where, path, batch_size)
    device = _model_device(um.model)
    if device is not None:
        x, y = x.to(device), y.to(device)
    model_name = type(um.model).__name__
    forward_at = _definition(um.model)
    if forward_at and path and os.path.realpath(forward_at.rsplit(":", 1)[0]) != os.path.realpath(path):
        forward_at = None  # (a forward of torch's own, e.g. nn.Sequential's: its class name says enough)
    forward = f"{model_name}.forward" + (f" at {forward_at}" if forward_at else "")
    consumer = _InputConsumer(um.model, x)
    norms = _BatchOfOne(um.model)
    # With gradients on (the graph says whether the loss reaches the parameters), in eval mode.
    with eval_mode(um.model), torch.enable_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with consumer, norms:
                output = um.model(x)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # (user code may raise any kind)
            if norms.found is not None:  # (one without running statistics says so in eval mode too)
                raise norms.error(where) from exc
            at = _user_location(exc.__traceback__, path) or where
            first = _one_line(str(exc).strip().splitlines()[0]) if str(exc).strip() else ""
            if isinstance(exc, (RuntimeError, ValueError, TypeError)) and _DTYPE_WORDS.search(first):
                raise UserModelError(
                    f"{at}: model/data dtype mismatch: {first} "
                    f"(in {forward}; input batch of dtype {str(x.dtype).removeprefix('torch.')})"
                ) from exc
            if isinstance(exc, RuntimeError) and _SHAPE_WORDS.search(str(exc)):
                raise UserModelError(
                    f"{at}: model/data shape mismatch: {first} "
                    f"(in {forward}; input batch of shape {tuple(x.shape)})"
                ) from exc
            raise UserModelError(f"{at}: exception in {forward}: {_error_text(exc)}") from exc
        if norms.found is not None:
            raise norms.error(where)
        loss_at = _definition(um.loss_fn)
        try:
            loss = um.loss_fn(output, y)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # (user code may raise any kind)
            at = _user_location(exc.__traceback__, path) or where
            shapes = f"output {_describe(output)}, target of shape {tuple(y.shape)}"
            raise UserModelError(f"{at}: loss_fn raised {_error_text(exc)} ({shapes})") from exc
        connected = isinstance(loss, torch.Tensor) and loss.requires_grad
        outputs = _tensors(output)
        output_connected = any(t.requires_grad for t in outputs) if outputs else None
        output, loss = _detached(output), _detached(loss)  # (the graph is let go)
        # (still in eval mode: the check may run the model again)
        with torch.no_grad():
            probabilities = _probabilities_finding(um.model, um.loss_fn, x, y, output, loss, thresholds)
    said = tuple(dict.fromkeys(_one_line(w.message) for w in caught
                               if issubclass(w.category, (UserWarning, RuntimeWarning))))
    at = loss_at if loss_at and path and _same_file(loss_at.rsplit(":", 1)[0], path) else where
    if not isinstance(loss, torch.Tensor):
        raise UserModelError(f"{at}: loss_fn returned {_describe(loss)}, expected a scalar tensor")
    if loss.numel() != 1:
        raise UserModelError(f"{at}: loss_fn returned shape {tuple(loss.shape)}, expected a scalar")
    if loss.is_complex():
        raise UserModelError(f"{at}: loss_fn returned a complex tensor, expected a real scalar")
    value = float(loss.detach())
    if math.isnan(value) or math.isinf(value):
        kind = "NaN" if math.isnan(value) else "Inf"
        cause = "the model's output is finite, so loss_fn made it"
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            bad = int((~torch.isfinite(output)).sum())
            if bad:
                cause = f"the model's output holds {bad} NaN/Inf values of {output.numel()}"
        raise UserModelError(f"{at}: the loss is {kind} on the first batch ({cause})")
    if not connected:  # (backward would fail: "element 0 of tensors does not require grad")
        steps = "a step no gradient passes (argmax, a comparison, rounding, .item(), .detach() or torch.no_grad())"
        if output_connected is False:
            raise UserModelError(f"{forward_at or where}: the model's output doesn't depend on its parameters: "
                                 f"{forward} computes it through {steps}, so training has no gradient to follow")
        who = "loss_fn computes it" if output_connected else "it is computed"
        raise UserModelError(f"{at}: the loss doesn't depend on the model's parameters: {who} through {steps}, "
                             "so training has no gradient to follow")
    if um.val is not None:
        _check_validation_batch(um, where, batch_size, device)
    inputs, axis = (um.x, consumer.feature_axis()) if um.x is not None else _batch_first(
        x, input_batch_dim(x, y), consumer.feature_axis())
    scale = input_scale_finding(inputs, thresholds, axis)
    return FirstBatchCheck(warnings=said, findings=tuple(d for d in (probabilities, scale) if d is not None))


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors of a model's output: itself, or those of its tuple, list or dict, one level deep."""
    parts = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else [value]
    return [part for part in parts if isinstance(part, torch.Tensor)]


def _detached(value: Any) -> Any:
    """``value`` with its tensors (itself, or those of its tuple, list or dict) detached."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if type(value) is dict:
        return {key: _detached(part) for key, part in value.items()}
    if type(value) in (tuple, list):
        return type(value)(_detached(part) for part in value)
    return value


def _batch_first(x: torch.Tensor, dim: int, axis: int | None) -> tuple[torch.Tensor, int | None]:
    """``x`` with its examples' dimension ``dim`` moved first, and where feature ``axis`` then is."""
    if dim == 0:
        return x, axis
    return x.movedim(dim, 0), None if axis is None else 0 if axis == dim else axis + 1 if axis < dim else axis


class _PreHooks:
    """While entered, ``_seen`` is a forward pre-hook on the modules ``_watched`` gives (all of
    ``self.model``'s by default); the hooks are removed on exit, whatever happened."""

    model: nn.Module
    _handles: list[Any]

    def _watched(self) -> Iterable[nn.Module]:
        return self.model.modules()

    def _seen(self, module: nn.Module, args: tuple) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        self._handles = [module.register_forward_pre_hook(self._seen) for module in self._watched()]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class _BatchOfOne(_PreHooks):
    """While entered, notes the first batch norm that normalises in training mode as the model
    trains (or always: one without running statistics) and meets a batch of one example, which
    torch turns down at the first training step; its hooks are removed on exit."""

    def __init__(self, model: nn.Module) -> None:
        trains = {id(module): training for module, training in training_modes(model)}
        self.norms = {id(module): f"{name} ({type(module).__name__})" if name else type(module).__name__
                      for name, module in model.named_modules()
                      if isinstance(module, nn.modules.batchnorm._BatchNorm)
                      and (trains[id(module)] or module.running_mean is None)}
        self.model = model
        self.found: tuple[str, tuple[int, ...]] | None = None
        self._handles: list[Any] = []

    def _watched(self) -> list[nn.Module]:
        return [module for module in self.model.modules() if id(module) in self.norms]

    def _seen(self, module: nn.Module, args: tuple) -> None:
        if self.found is not None or not args or not isinstance(args[0], torch.Tensor) or args[0].dim() < 2:
            return
        shape = tuple(args[0].shape)
        if math.prod(shape[2:], start=shape[0]) == 1:  # (torch's own test, F._verify_batch_size)
            self.found = (self.norms[id(module)], shape)

    def error(self, where: str) -> UserModelError:
        assert self.found is not None
        name, shape = self.found
        return UserModelError(f"{where}: {name} gets an input of shape {shape} on the first batch, one value per "
                              f"channel: {BATCH_OF_ONE_HINT}")


def _check_validation_batch(um: UserModel, where: str, batch_size: int, device: torch.device | None) -> None:
    """The model and loss run on the first validation batch as they do on the training data."""
    assert um.val is not None
    x, y = um.val[0][:batch_size], um.val[1][:batch_size]
    if device is not None:
        x, y = x.to(device), y.to(device)
    with eval_mode(um.model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (said once, for the training batch)
        try:
            loss = um.loss_fn(um.model(x), y)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # (user code may raise any kind)
            raise UserModelError(f"{where}: the validation data fails where the training data runs: "
                                 f"{_error_text(exc)} (X_val batch of shape {tuple(x.shape)}, "
                                 f"y_val of shape {tuple(y.shape)})") from exc
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise UserModelError(f"{where}: loss_fn returned {_describe(loss)} on the validation data, expected a scalar")


# ----------------------------------------------------------------------------------------- first-batch findings


class _InputConsumer(_PreHooks):
    """While entered, notes the first layer of ``model`` whose kind says where its input's
    features are (a convolution, a Linear, ...; containers are looked through) that takes ``x``
    itself as its first argument (the same tensor, or a view of it with its shape). Its hooks are
    removed on exit, whatever happened."""

    # (The probe's list of layers whose 3-D tensors are (N, C, L): the one case the kind decides.
    # Images are channels first whatever takes them.)
    CHANNELS_FIRST = CHANNELS_FIRST_1D
    FEATURES_LAST = (nn.Linear, nn.Bilinear, nn.RNNBase, nn.MultiheadAttention, nn.LayerNorm,
                     nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.TransformerEncoder)

    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        self.model, self.x = model, x
        self.module: nn.Module | None = None
        self._handles: list[Any] = []

    def _seen(self, module: nn.Module, args: tuple) -> None:
        if self.module is not None or not isinstance(module, self.CHANNELS_FIRST + self.FEATURES_LAST) \
                or not args or not isinstance(args[0], torch.Tensor):
            return
        first, x = args[0], self.x
        try:
            same = first is x or (first.shape == x.shape and x.numel() > 0 and first.data_ptr() == x.data_ptr())
        except RuntimeError:  # (a tensor without storage)
            same = False
        if same:
            self.module = module

    def feature_axis(self) -> int | None:
        """1 when a convolution or a per-channel normalisation takes the input ((N, C, ...)
        channels first); the last axis when a Linear, a recurrent layer, attention or a LayerNorm
        does; None when no module takes the input as it is (a function reshapes it first)."""
        if self.module is None:
            return None
        if isinstance(self.module, self.CHANNELS_FIRST):
            return 1 if self.x.dim() >= 3 else self.x.dim() - 1  # (a BatchNorm1d of (N, C): columns)
        return self.x.dim() - 1


def input_scale_finding(x: Any, thresholds: Thresholds = Thresholds(),
                        feature_axis: int | None = None) -> Diagnosis | None:
    """An ``input_scale`` finding when the features of ``x`` are far from unit scale, else None.

    A feature is the slice along ``feature_axis`` when it is known (the first layer's kind says
    it: a Conv1d's channels are axis 1 of (N, C, L)); otherwise a column of 2-D inputs, the last
    axis of 3-D (sequence) inputs and the channel (axis 1) of images. Its spread is the standard
    deviation over everything else, measured on the first ``INPUT_SCALE_EXAMPLES`` examples, and
    it is found far from unit scale when its spread is too wide, when features' spreads are too
    far apart, or when it sits far from zero. Integer inputs (token ids) are no features.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0 or x.shape[0] == 0:
        return None
    x = x.detach()[:INPUT_SCALE_EXAMPLES]
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # (a squared spread of 1e4 overflows half precision)
    axis = feature_axis if feature_axis is not None else 1 if x.dim() >= 4 else x.dim() - 1
    dims = tuple(d for d in range(x.dim()) if d != axis) if x.dim() > 1 else (0,)
    std, mean = torch.std_mean(x, dim=dims, correction=0)
    std = std.double().cpu().numpy().reshape(-1)  # (one copy to the host)
    mean = mean.double().cpu().numpy().reshape(-1)
    # Constant features (std 0, or float32 rounding of a constant) have no scale to compare.
    varied = np.flatnonzero(np.isfinite(std) & (std > 1e-6 * np.abs(mean)) & (std > 0))
    if not len(varied):
        return None
    widest = int(varied[np.argmax(std[varied])])
    narrowest = int(varied[np.argmin(std[varied])])
    ratio = float(std[widest] / std[narrowest])
    big = std[widest] > thresholds.input_std_high
    apart = ratio > thresholds.input_std_ratio
    word = "channel" if axis == 1 and x.dim() >= 3 else "feature"
    if not (big or apart):
        farthest = int(varied[np.argmax(np.abs(mean[varied]))])
        if abs(mean[farthest]) <= thresholds.input_mean_high:
            return None
        message = (f"The inputs are far from zero: input {word} {farthest} has a mean of {mean[farthest]:.4g} "
                   f"and a standard deviation of {std[farthest]:.3g}, so a weight on it acts as a large bias: "
                   "a small change of that weight moves the layer's output more than the inputs' variations "
                   "do, and the useful signal is a small ripple on a large offset.")
        return before_training("input_scale", message, {
            word: farthest, "std": float(std[farthest]), "mean": float(mean[farthest]), "examples": float(len(x))})
    wide = f"input {word} {widest} has a standard deviation of {std[widest]:.3g} (mean {mean[widest]:.3g})"
    narrow = f"{word} {narrowest} one of {std[narrowest]:.3g}, {ratio:.3g} times smaller"
    if big and apart:
        message = (f"The inputs are far from unit scale: {wide} and {narrow}; weights sized for inputs "
                   "of about 1 get outsized gradients on the wide one and crawl on the narrow one.")
    elif big:
        message = (f"The inputs are far from unit scale: {wide}, where initialisation and learning rates "
                   "assume about 1, so its weights get outsized gradients and the first layer's outputs "
                   "blow up or saturate.")
    else:
        message = (f"The inputs are on very different scales: {wide} and {narrow}, so no one learning rate "
                   "suits the weights of both.")
    return before_training("input_scale", message, {
        word: widest, "std": float(std[widest]), "mean": float(mean[widest]), f"narrowest_{word}": narrowest,
        "narrowest_std": float(std[narrowest]), "ratio": ratio, "examples": float(len(x))})


#: Operations that only move an output's numbers around: looked through to the one that made them.
_RESHAPES = {"View", "UnsafeView", "Reshape", "ReshapeAlias", "Squeeze", "Unsqueeze", "Permute", "Transpose",
             "T", "Clone", "Expand", "ToCopy", "Alias", "Select", "Slice", "Flatten", "Contiguous"}


def _last_operation(output: torch.Tensor) -> str:
    """The autograd name of the operation that made ``output``, past reshapes ('Sigmoid', ...)."""
    fn = output.grad_fn
    name = ""
    for _ in range(64):
        if fn is None:
            return ""
        name = re.sub(r"Backward\d*$", "", type(fn).__name__)
        if name not in _RESHAPES or not fn.next_functions:
            return name
        fn = fn.next_functions[0][0]
    return name


def _logit_loss(loss_fn: Callable, output: torch.Tensor, y: torch.Tensor, value: float) -> tuple[str, str] | None:
    """(kind, name) when ``loss_fn`` applies its own softmax ('softmax') or sigmoid ('sigmoid').

    Its type tells for torch's losses and functionals, whatever their options (class weights or
    label smoothing change the value); any other callable, a lambda or a function wrapping one,
    says nothing by its type, so its value on the batch is compared with theirs.
    """
    target = loss_fn.func if isinstance(loss_fn, functools.partial) else loss_fn
    if isinstance(target, nn.CrossEntropyLoss) or target is F.cross_entropy:
        return "softmax", "nn.CrossEntropyLoss" if isinstance(target, nn.Module) else "F.cross_entropy"
    if isinstance(target, nn.BCEWithLogitsLoss) or target is F.binary_cross_entropy_with_logits:
        return "sigmoid", ("nn.BCEWithLogitsLoss" if isinstance(target, nn.Module)
                           else "F.binary_cross_entropy_with_logits")
    if isinstance(target, nn.Module) and type(target).__module__.startswith("torch."):
        return None  # another of torch's losses (NLLLoss, BCELoss, MSELoss...)
    for kind, name, references in (("softmax", "F.cross_entropy", _cross_entropy_values(output, y)),
                                   ("sigmoid", "F.binary_cross_entropy_with_logits", _bce_values(output, y))):
        if any(math.isclose(value, ref, rel_tol=1e-5, abs_tol=1e-6) for ref in references):
            return kind, f"loss_fn (its value is {name}'s)"
    return None


def _cross_entropy_values(output: torch.Tensor, y: torch.Tensor) -> list[float]:
    """F.cross_entropy of the batch, as mean and sum, for the layouts a wrapper may pass it."""
    pairs = [(output, y)]
    if output.dim() > 2 and y.numel() * output.shape[-1] == output.numel():  # (N, T, C) read as (N*T, C)
        pairs.append((output.reshape(-1, output.shape[-1]), y.reshape(-1)))
    values = []
    for out, target in pairs:
        if out.dim() < 2:
            continue
        if not target.is_floating_point():
            # (a class index out of range is a device-side assert on CUDA: never hand it over)
            classes = out.shape[1]
            if target.numel() == 0 or not bool(((target >= 0) & (target < classes) | (target == -100)).all()):
                continue
        elif target.shape != out.shape:
            continue
        try:
            for reduction in ("mean", "sum"):
                values.append(float(F.cross_entropy(out, target, reduction=reduction)))
        except (RuntimeError, ValueError, TypeError, IndexError):
            continue
    return values


def _bce_values(output: torch.Tensor, y: torch.Tensor) -> list[float]:
    """F.binary_cross_entropy_with_logits of the batch, as mean and sum."""
    if y.numel() != output.numel() or y.numel() == 0:
        return []
    target = y.reshape(output.shape).to(output.dtype)
    return [float(F.binary_cross_entropy_with_logits(output, target, reduction=reduction))
            for reduction in ("mean", "sum")]


def _softmax_rows(output: torch.Tensor, tolerance: float) -> tuple[int, float] | None:
    """(classes, largest |sum - 1|) when every row of ``output`` is a probability distribution,
    along the last dimension or dimension 1."""
    if output.dim() < 2 or float(output.min()) < 0:
        return None
    for dim in dict.fromkeys((output.dim() - 1, 1)):
        if output.shape[dim] < 2:
            continue
        error = float((output.double().sum(dim) - 1).abs().max())
        if error <= tolerance:
            return output.shape[dim], error
    return None


def _probabilities_finding(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: Any, output: Any, loss: Any,
                           thresholds: Thresholds) -> Diagnosis | None:
    """A ``probabilities_to_logit_loss`` finding when the model's outputs on the first batch are
    already probabilities (a softmax's rows, or a sigmoid's) and the loss makes its own."""
    if not (isinstance(output, torch.Tensor) and output.is_floating_point() and output.numel()
            and isinstance(y, torch.Tensor) and isinstance(loss, torch.Tensor) and loss.numel() == 1):
        return None
    low, high = float(output.min()), float(output.max())
    if not (0.0 <= low and high <= 1.0):
        return None  # (a probability is in [0, 1]; NaN fails here too)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (the comparisons' own warnings are not the user's)
            value = float(loss.detach())
            loss_kind = _logit_loss(loss_fn, output, y, value)
            if loss_kind is None:
                return None
            kind, loss_name = loss_kind
            rows = _softmax_rows(output, thresholds.probability_sum_tolerance)
            if rows is None:
                with torch.enable_grad():  # the graph names the operation that made the output
                    again = model(x)
                if not isinstance(again, torch.Tensor) or _last_operation(again) != "Sigmoid":
                    return None
    except KeyboardInterrupt:
        raise
    except Exception:  # (a check of the user's code: it raises nothing of its own)
        logger.debug("no probabilities check of the model's output", exc_info=True)
        return None
    twice = f"{loss_name} applies a {kind} of its own"
    if rows is not None:
        classes, error = rows
        message = (f"The model's outputs are already probabilities (each row of {classes} is non-negative and "
                   f"sums to 1 within {error:.1g}: a softmax), and {twice}: squashed twice, the outputs can "
                   "barely move the loss, so the gradients are small and training crawls.")
        evidence = {"min_output": low, "max_output": high, "row_sum_error": error, "classes": classes}
    else:
        message = (f"The model's outputs come out of a sigmoid (all between {low:.3g} and {high:.3g}), and "
                   f"{twice}: squashed twice, the outputs can barely move the loss, so the gradients are "
                   "small and training crawls.")
        evidence = {"min_output": low, "max_output": high}
    return before_training("probabilities_to_logit_loss", message, evidence)


# ----------------------------------------------------------------------------------------- sampling


def loader_boundary_sample(loader: Any, limit: int = BOUNDARY_SAMPLE) -> tuple[np.ndarray, np.ndarray] | None:
    """Points and labels of a loader of 2-D classification data, for the decision boundary.

    The rule: the loader's first batches, in its own order, up to ``limit`` examples (and so at
    most ``limit`` batches, should a loader yield empty ones), when every one of them is an
    ``(x, y)`` pair of tensors with ``x`` of shape (B, 2) and floating point and ``y`` B integer
    class labels (shape (B,) or (B, 1); a floating ``y`` is regression: no boundary). Anything
    else (a dict, a batch of other shapes or types, an exception in the loader) gives None: the
    boundary is a display extra, and training reports a bad loader itself. A one-shot iterator (a
    generator) is never read here, since every batch it gave would be lost to training, and only
    ``limit`` examples are read from an endless one. Torch's random stream and the generators the
    loader and its sampler own come back as they were, so training sees the batch order it would
    have seen without the sample.

    Returns:
        ``(points (N, 2) float32, labels (N,))`` as numpy arrays, or None.
    """
    if isinstance(loader, collections.abc.Iterator) or not isinstance(loader, collections.abc.Iterable):
        return None
    batch_sampler = getattr(loader, "batch_sampler", None)
    owners = (loader, getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None))
    generators = {id(g): g for g in (getattr(owner, "generator", None) for owner in owners)
                  if isinstance(g, torch.Generator)}
    states = {key: g.get_state() for key, g in generators.items()}
    points, labels, count = [], [], 0
    try:
        with torch.random.fork_rng(devices=[]):
            for batch in itertools.islice(iter(loader), limit):
                if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                    return None
                x, y = batch
                if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
                    return None
                if x.dim() != 2 or x.shape[1] != 2 or not x.is_floating_point():
                    return None
                if y.is_floating_point() or y.is_complex() or y.dim() not in (1, 2) or y.numel() != len(x) \
                        or len(y) != len(x):
                    return None
                take = min(len(x), limit - count)
                points.append(x[:take].detach().float().cpu())
                labels.append(y.reshape(-1)[:take].detach().cpu())
                count += take
                if count >= limit:
                    break
    except Exception:  # (user code may raise anything: the view then just has no boundary)
        logger.debug("no decision-boundary sample from the data loader", exc_info=True)
        return None
    finally:
        for key, g in generators.items():
            g.set_state(states[key])
    if count == 0:
        return None
    return torch.cat(points).numpy(), torch.cat(labels).numpy()
