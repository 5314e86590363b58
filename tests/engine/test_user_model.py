"""Loading and checking a user's own model file: every failure is one clear line."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engine.user_model import UserModel, UserModelError, load_user_model, validate_user_model

HEADER = "import torch\nfrom torch import nn\n"


def write(tmp_path: Path, source: str, name: str = "model.py") -> Path:
    """A model file: HEADER (2 lines) then ``source``, so user code starts on line 3."""
    path = tmp_path / name
    path.write_text(HEADER + textwrap.dedent(source))
    return path


def returning(tmp_path: Path, returned: str, name: str = "model.py") -> Path:
    """A model file whose ``build()`` (line 3) returns ``returned`` (line 4)."""
    return write(tmp_path, f"def build():\n    return {returned}\n", name)


def line_of(path: Path, text: str) -> int:
    """1-based line of the first line of ``path`` containing ``text``."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {path}")


def load_error(ref: str) -> str:
    with pytest.raises(UserModelError) as info:
        load_user_model(ref)
    return _checked(str(info.value))


def validate_error(ref: str, **kwargs) -> str:
    um = load_user_model(ref)
    with pytest.raises(UserModelError) as info:
        validate_user_model(um, **kwargs)
    return _checked(str(info.value))


def _checked(message: str) -> str:
    assert "\n" not in message and message == message.strip()
    return message


VALID_TENSORS = """
def build():
    X = torch.arange(300, dtype=torch.float32).reshape(150, 2) / 100
    y = (X[:, 0] > 1.5).long()
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    return model, (X, y), nn.CrossEntropyLoss()
"""

VALID_LOADER = """
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, 1))

    def forward(self, x):
        return self.body(x).squeeze(1)


def make():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(100, 3, generator=g)
    y = X.sum(dim=1)
    return Net(), DataLoader(TensorDataset(X, y), batch_size=16, shuffle=True), nn.MSELoss()
"""


# ------------------------------------------------------------------------------------- valid files


def test_valid_tensor_form(tmp_path):
    path = write(tmp_path, VALID_TENSORS)
    path_entries = list(sys.path)
    um = load_user_model(f"{path}:build")
    assert isinstance(um, UserModel) and um.ref == f"{path}:build"
    assert isinstance(um.model, nn.Sequential) and isinstance(um.loss_fn, nn.CrossEntropyLoss)
    assert um.loader is None
    expected_x = np.arange(300, dtype=np.float32).reshape(150, 2) / 100
    np.testing.assert_array_equal(um.x.numpy(), expected_x)
    np.testing.assert_array_equal(um.y.numpy(), (expected_x[:, 0] > 1.5).astype(np.int64))
    validate_user_model(um, batch_size=64)
    # The file's folder led sys.path while loading; now it follows everything else.
    assert sys.path == path_entries + [str(tmp_path)]
    sys.path.remove(str(tmp_path))
    assert not (tmp_path / "__pycache__").exists()


def test_valid_loader_form_leaves_the_model_as_it_was(tmp_path):
    path = write(tmp_path, VALID_LOADER, "regression.py")
    um = load_user_model(f"{path}:make")
    assert um.x is None and um.y is None and isinstance(um.loader, torch.utils.data.DataLoader)
    x, y = next(iter(um.loader))
    np.testing.assert_allclose(y.numpy(), x.numpy().sum(axis=1), rtol=1e-6)
    bn = um.model.body[1]
    state = {k: v.clone() for k, v in um.model.state_dict().items()}
    um.model.body[2].eval()  # a mixed set of training flags must come back as it was
    flags = [m.training for m in um.model.modules()]
    validate_user_model(um, batch_size=16)
    assert [m.training for m in um.model.modules()] == flags
    for key, value in um.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert int(bn.num_batches_tracked) == 0


def test_each_load_is_fresh_and_unique(tmp_path):
    path = returning(
        tmp_path, "nn.Linear(2, 3), (torch.zeros(4, 2), torch.zeros(4)), nn.MSELoss()"
    )
    first = load_user_model(f"{path}:build")
    path.write_text(path.read_text().replace("nn.Linear(2, 3)", "nn.Linear(2, 5)"))
    second = load_user_model(f"{path}:build")
    assert first.model.out_features == 3 and second.model.out_features == 5
    assert type(first.model).__module__ == type(second.model).__module__  # nn.Linear, both
    assert sys.modules[first.model.__class__.__module__] is not None


def test_sibling_modules_can_be_imported(tmp_path):
    (tmp_path / "helpers_for_glassbox_test.py").write_text("HIDDEN = 7\n")
    path = write(tmp_path, """
    from helpers_for_glassbox_test import HIDDEN

    def build():
        return nn.Linear(2, HIDDEN), (torch.zeros(4, 2), torch.zeros(4, HIDDEN)), nn.MSELoss()
    """)
    um = load_user_model(f"{path}:build")
    assert um.model.out_features == 7
    validate_user_model(um)


def test_a_sibling_imported_inside_forward_is_found_after_loading(tmp_path):
    (tmp_path / "late_sibling_for_glassbox_test.py").write_text("def double(x):\n    return 2 * x\n")
    path = write(tmp_path, """
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 1)

        def forward(self, x):
            from late_sibling_for_glassbox_test import double
            return double(self.fc(x))

    def build():
        return Net(), (torch.ones(4, 2), torch.zeros(4, 1)), nn.MSELoss()
    """)
    um = load_user_model(f"{path}:build")
    validate_user_model(um)
    fc = um.model.fc
    torch.testing.assert_close(um.model(torch.ones(1, 2)), 2 * fc(torch.ones(1, 2)))
    sys.path.remove(str(tmp_path))


def test_a_seed_makes_the_function_repeatable_and_leaves_the_caller_stream(tmp_path):
    path = returning(tmp_path, "nn.Linear(3, 4), (torch.randn(8, 3), torch.randn(8, 4)), nn.MSELoss()")
    torch.manual_seed(99)
    expected_next = torch.rand(3)
    torch.manual_seed(99)
    first = load_user_model(f"{path}:build", seed=5)
    second = load_user_model(f"{path}:build", seed=5)
    other = load_user_model(f"{path}:build", seed=6)
    torch.testing.assert_close(torch.rand(3), expected_next)  # the caller's stream went on untouched
    torch.testing.assert_close(first.model.weight, second.model.weight)
    torch.testing.assert_close(first.x, second.x)
    assert not torch.equal(first.model.weight, other.model.weight)


def test_spawned_loader_workers_that_cannot_import_the_file_are_explained(tmp_path):
    path = write(tmp_path, """
    class Points(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.zeros(2), torch.zeros(1)

    def build():
        loader = torch.utils.data.DataLoader(Points(), batch_size=4, num_workers=1,
                                             multiprocessing_context="spawn")
        return nn.Linear(2, 1), loader, nn.MSELoss()
    """)
    um = load_user_model(f"{path}:build")
    with pytest.raises(UserModelError) as info:
        validate_user_model(um)
    message = str(info.value)
    assert "'spawn'" in message and "Points" in message and "num_workers=0" in message
    assert "\n" not in message


# ------------------------------------------------------------------------------------- load errors


def test_missing_file(tmp_path):
    message = load_error(f"{tmp_path / 'absent.py'}:build")
    assert message == f"{tmp_path / 'absent.py'}: no such file"


@pytest.mark.parametrize("ref", ["model.py", "model.txt:build", "model.py:", "model.py:not-a-name", ":build"])
def test_not_file_colon_function(ref):
    assert load_error(ref) == f"{ref}: expected 'path/to/file.py:function'"


def test_syntax_error(tmp_path):
    path = write(tmp_path, "def build(:\n    return 1\n")
    message = load_error(f"{path}:build")
    assert message.startswith(f"{path}:3: syntax error: "), message


def test_exception_while_importing(tmp_path):
    path = write(tmp_path, """
    SIZE = 4

    raise ValueError("no GPU named 'tpu0'")
    """)
    message = load_error(f"{path}:build")
    assert message == f"{path}:{line_of(path, 'raise')}: ValueError: no GPU named 'tpu0' while importing the file"
    path = write(tmp_path, "import glassbox_no_such_module_xyz\n", "imports.py")
    message = load_error(f"{path}:build")
    assert message.startswith(f"{path}:3: ModuleNotFoundError: No module named 'glassbox_no_such_module_xyz'")


def test_missing_function(tmp_path):
    path = write(tmp_path, """
    from math import sqrt

    def make_model():
        return None

    def helper():
        return sqrt(2)

    VALUE = 3
    """)
    message = load_error(f"{path}:build")
    assert message == f"{path}: no function 'build' (functions in the file: helper, make_model)"
    empty = write(tmp_path, "VALUE = 3\n", "empty.py")
    assert load_error(f"{empty}:build") == f"{empty}: no function 'build' (the file defines no functions)"
    assert load_error(f"{empty}:VALUE") == f"{empty}: 'VALUE' is an int, not a function"


def test_function_raising(tmp_path):
    path = write(tmp_path, """
    def helper(n):
        return n / 0

    def build():
        return helper(3)
    """)
    message = load_error(f"{path}:build")
    assert message == f"{path}:{line_of(path, 'n / 0')}: build() raised ZeroDivisionError: division by zero"
    path = write(tmp_path, "def build(n_layers):\n    return n_layers\n", "needs_args.py")
    message = load_error(f"{path}:build")
    assert message.startswith(f"{path}:3: build() raised TypeError: ") and "n_layers" in message


@pytest.mark.parametrize(
    "returned, described",
    [
        ("nn.Linear(2, 2), (torch.zeros(3, 2), torch.zeros(3))", "a tuple of 2 items"),
        ("None", "None"),
        ("nn.Linear(2, 2)", "a Linear"),
        ("[1, 2, 3, 4, 5]", "a list of 5 items"),
    ],
)
def test_wrong_return_form(tmp_path, returned, described):
    path = write(tmp_path, f"def build():\n    return {returned}\n")
    expected = (
        f"{path}: build() returned {described}; "
        "expected (model, (X, y), loss_fn) or (model, data_loader, loss_fn), optionally with validation "
        "data (X_val, y_val) or a loader of it as a fourth item"
    )
    assert load_error(f"{path}:build") == expected


def test_model_and_loss_and_data_of_the_wrong_kind(tmp_path):
    path = returning(
        tmp_path, "'mlp', (torch.zeros(3, 2), torch.zeros(3)), nn.MSELoss()"
    )
    assert load_error(f"{path}:build") == f"{path}: build() returned a str as the model; expected a torch.nn.Module"
    path = returning(
        tmp_path, "nn.Linear(2, 1), (torch.zeros(3, 2), torch.zeros(3)), 'mse'", "b.py"
    )
    assert f"{path}: build() returned a str as loss_fn; expected a callable" in load_error(f"{path}:build")
    path = returning(
        tmp_path, "nn.Linear(2, 1), torch.zeros(3, 2), nn.MSELoss()", "c.py"
    )
    assert load_error(f"{path}:build") == (
        f"{path}: build() returned a tensor of shape (3, 2) as data; "
        "expected (X, y) tensors or an iterable of (x, y) batches"
    )


def test_x_y_not_tensors_or_mismatched(tmp_path):
    path = write(tmp_path, """
    import numpy as np

    def build():
        return nn.Linear(2, 1), (np.zeros((10, 2)), np.zeros(10)), nn.MSELoss()
    """)
    assert load_error(f"{path}:build") == f"{path}: X and y must be torch tensors; got ndarray and ndarray"
    path = returning(
        tmp_path, "nn.Linear(2, 1), (torch.zeros(100, 2), torch.zeros(90)), nn.MSELoss()", "n.py"
    )
    assert load_error(f"{path}:build") == (
        f"{path}: X has 100 examples but y has 90 (shapes (100, 2) and (90,)); "
        "examples are stacked along the first dimension of both")


def test_nan_and_inf_in_data(tmp_path):
    path = write(tmp_path, """
    def build():
        X = torch.zeros(50, 4)
        X[1, 2] = float("nan")
        X[7, 0] = float("nan")
        X[9, 3] = float("inf")
        X[9, 1] = -float("inf")
        X[9, 2] = float("nan")
        return nn.Linear(4, 1), (X, torch.zeros(50)), nn.MSELoss()
    """)
    x = np.zeros((50, 4), dtype=np.float32)
    x[[1, 7, 9], [2, 0, 2]] = np.nan
    x[9, 3], x[9, 1] = np.inf, -np.inf
    n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
    expected = f"{path}: X contains non-finite values: {n_nan} NaN, {n_inf} Inf (of {x.size})"
    assert load_error(f"{path}:build") == expected
    body = "nn.Linear(4, 1), (torch.zeros(5, 4), torch.tensor([0, 1, float('inf'), 2, 3.])), nn.MSELoss()"
    path = returning(tmp_path, body, "y.py")
    assert load_error(f"{path}:build") == f"{path}: y contains non-finite values: 0 NaN, 1 Inf (of 5)"


# ------------------------------------------------------------------------------------- validate errors


def test_shape_mismatch(tmp_path):
    path = write(tmp_path, """
    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.Linear(3, 16)

        def forward(self, x):
            return self.first(x)

    def build():
        return MLP(), (torch.zeros(100, 2), torch.zeros(100, 16)), nn.MSELoss()
    """)
    try:  # the message torch itself gives for the same shapes
        nn.Linear(3, 16)(torch.zeros(64, 2))
    except RuntimeError as exc:
        torch_message = str(exc).splitlines()[0]
    message = validate_error(f"{path}:build")
    forward_call = line_of(path, "return self.first(x)")
    forward_def = line_of(path, "def forward")
    assert message == (
        f"{path}:{forward_call}: model/data shape mismatch: {torch_message} "
        f"(in MLP.forward at {path}:{forward_def}; input batch of shape (64, 2))"
    )


def test_shape_mismatch_in_a_torch_model(tmp_path):
    path = returning(
        tmp_path, "nn.Sequential(nn.Conv2d(3, 4, 3)), (torch.zeros(8, 1, 6, 6), torch.zeros(8)), nn.MSELoss()"
    )
    message = validate_error(f"{path}:build")
    assert message.startswith(f"{path}: model/data shape mismatch: ")
    assert "3 channels" in message and "(8, 1, 6, 6)" in message
    # (torch's own forward is named, not where torch keeps it: the place to look is the user's file)
    assert "(in Sequential.forward; input batch" in message and "site-packages" not in message


@pytest.mark.parametrize("model, x, x_dtype", [
    ("nn.Linear(2, 1)", "torch.zeros(8, 2, dtype=torch.float64)", "float64"),
    ("nn.Sequential(nn.Conv2d(1, 2, 3))", "torch.zeros(8, 1, 5, 5, dtype=torch.float64)", "float64"),
    ("nn.Embedding(4, 2)", "torch.zeros(8, 3)", "float32"),
])
def test_dtype_mismatch_is_not_called_a_shape_mismatch(tmp_path, model, x, x_dtype):
    path = returning(tmp_path, f"{model}, ({x}, torch.zeros(8)), nn.MSELoss()")
    module, batch = eval(model), eval(x)  # noqa: S307 - the same expressions, to get torch's own message
    with pytest.raises(RuntimeError) as torch_error:
        module(batch)
    torch_message = str(torch_error.value).splitlines()[0]
    message = validate_error(f"{path}:build")
    assert message.startswith(f"{path}: model/data dtype mismatch: {torch_message} (in ")
    assert message.endswith(f"; input batch of dtype {x_dtype})")


def test_exception_inside_forward(tmp_path):
    path = write(tmp_path, """
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(2, 2)

        def forward(self, x):
            table = {"a": 1}
            return self.layer(x) * table["b"]

    def build():
        return Net(), (torch.zeros(10, 2), torch.zeros(10, 2)), nn.MSELoss()
    """)
    message = validate_error(f"{path}:build")
    assert message == (
        f"{path}:{line_of(path, 'table[')}: exception in Net.forward at {path}:{line_of(path, 'def forward')}: "
        "KeyError: 'b'"
    )


def test_loss_not_a_scalar(tmp_path):
    path = write(tmp_path, """
    def build():
        X = torch.randn(200, 2)
        return nn.Linear(2, 3), (X, torch.zeros(200, dtype=torch.long)), nn.CrossEntropyLoss(reduction="none")
    """)
    assert validate_error(f"{path}:build") == f"{path}: loss_fn returned shape (64,), expected a scalar"
    assert validate_error(f"{path}:build", batch_size=10).endswith("returned shape (10,), expected a scalar")
    path = write(tmp_path, """
    def per_example(out, y):
        return (out - y) ** 2

    def build():
        return nn.Linear(2, 1), (torch.zeros(20, 2), torch.zeros(20, 1)), per_example
    """, "fn.py")
    message = validate_error(f"{path}:build")
    assert message == f"{path}:{line_of(path, 'def per_example')}: loss_fn returned shape (20, 1), expected a scalar"
    path = returning(
        tmp_path, "nn.Linear(2, 1), (torch.zeros(20, 2), torch.zeros(20, 1)), lambda o, y: 0.5", "f.py"
    )
    assert validate_error(f"{path}:build") == f"{path}:4: loss_fn returned a float, expected a scalar tensor"


def test_loss_nan_or_inf(tmp_path):
    path = write(tmp_path, """
    def log_loss(out, y):
        return torch.log(out - 10).mean()

    def build():
        return nn.Linear(2, 1), (torch.zeros(20, 2), torch.zeros(20, 1)), log_loss
    """)
    message = validate_error(f"{path}:build")
    assert message == (
        f"{path}:{line_of(path, 'def log_loss')}: the loss is NaN on the first batch "
        "(the model's output is finite, so loss_fn made it)"
    )
    path = write(tmp_path, """
    def build():
        model = nn.Linear(2, 1)
        with torch.no_grad():
            model.bias.fill_(float("inf"))
        return model, (torch.zeros(20, 2), torch.zeros(20, 1)), nn.L1Loss()
    """, "inf.py")
    assert validate_error(f"{path}:build") == (
        f"{path}: the loss is Inf on the first batch (the model's output holds 20 NaN/Inf values of 20)"
    )


def test_loss_fn_raising(tmp_path):
    path = returning(
        tmp_path, "nn.Linear(2, 3), (torch.zeros(20, 2), torch.zeros(20, 3)), nn.CrossEntropyLoss(weight=torch.ones(5))"
    )
    message = validate_error(f"{path}:build")
    assert message.startswith(f"{path}: loss_fn raised RuntimeError: ")
    assert message.endswith("(output a tensor of shape (20, 3), target of shape (20, 3))")


def test_loader_problems(tmp_path):
    path = write(tmp_path, """
    def batches():
        yield torch.zeros(4, 2)

    def broken():
        raise OSError("disk gone")
        yield

    def empty():
        return nn.Linear(2, 1), [], nn.MSELoss()

    def single():
        return nn.Linear(2, 1), batches(), nn.MSELoss()

    def raising():
        return nn.Linear(2, 1), broken(), nn.MSELoss()

    def lists():
        return nn.Linear(2, 1), [([0.0, 1.0], [1.0])], nn.MSELoss()
    """)
    assert validate_error(f"{path}:empty") == f"{path}: the data loader yielded no batches"
    assert validate_error(f"{path}:single") == (
        f"{path}: the data loader yielded a tensor of shape (4, 2); expected (x, y) batches"
    )
    assert validate_error(f"{path}:raising") == (
        f"{path}:{line_of(path, 'disk gone')}: the data loader raised OSError: disk gone"
    )
    assert validate_error(f"{path}:lists") == (
        f"{path}: the batch's x and the batch's y must be torch tensors; got list and list"
    )


REINIT_MODEL = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.pretrained = nn.Linear(4, 8)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.gain = nn.Parameter(torch.ones(8))
        self.out = nn.Linear(8, 3)
        nn.init.zeros_(self.out.weight)  # the file's own init
        with torch.no_grad():
            self.pretrained.weight.fill_(0.25)  # as if loaded from a checkpoint...
        self.pretrained.requires_grad_(False)  # ...and frozen

    def forward(self, x):
        h = torch.relu(self.pretrained(x))[:, None, :]
        h, _ = self.attention(h, h, h)
        return self.out(h[:, 0] * self.gain)


def build():
    x = torch.randn(64, 4)
    return Net(), (x, (x[:, 0] > 0).long()), nn.functional.cross_entropy
"""


def test_reinitialize_gives_back_the_weights_the_file_built(tmp_path):
    """Not reset_parameters() everywhere: that re-randomised the file's zero init and the frozen
    'pretrained' layer, and left MultiheadAttention's in_proj_weight and a bare parameter trained."""
    from engine.scenarios import build_user_run

    ref = f"{write(tmp_path, REINIT_MODEL)}:build"
    trainer = build_user_run(ref, device="cpu").trainer
    built = load_user_model(ref, seed=0).model.state_dict()  # (an independent build of the same file)
    try:
        for _ in range(5):
            trainer.step()
        trained = trainer.model.state_dict()
        for name in ("attention.in_proj_weight", "gain", "out.weight"):
            assert not torch.equal(trained[name], built[name]), name  # training moved them
        trainer.reinitialize()
        after = trainer.model.state_dict()
        assert after.keys() == built.keys()
        for name, value in built.items():
            assert torch.equal(after[name], value), name
        assert not trainer.model.pretrained.weight.requires_grad  # still frozen
        assert trainer.step_count == 0
        trainer.step()  # and it trains again from there
        assert not torch.equal(trainer.model.state_dict()["out.weight"], built["out.weight"])
    finally:
        trainer.close()


F64_MODEL = """
import torch
from torch import nn


def build():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    return model, (x, (x[:, 0] * x[:, 1] > 0).long()), nn.functional.cross_entropy
"""


def test_a_float64_model_on_2d_data_gets_its_decision_boundary(tmp_path):
    """The grid is made in the model's own dtype (a float32 grid failed in a float64 model, and the
    view said the model had no 2-D input)."""
    from engine.scenarios import build_user_run
    from engine.views import GRID, boundary_view

    run = build_user_run(f"{write(tmp_path, F64_MODEL)}:build", device="cpu")
    try:
        run.trainer.step()
        view = boundary_view(run, 1)
        assert view is not None and view.prediction.shape == (GRID, GRID) and view.hidden is not None
        x0, x1, y0, y1 = view.extent
        for row, col in ((0, 0), (GRID // 2, GRID - 1), (GRID - 1, 3)):
            point = torch.tensor([[x0 + (x1 - x0) * col / (GRID - 1), y0 + (y1 - y0) * row / (GRID - 1)]],
                                 dtype=torch.float64)
            with torch.no_grad():
                expected = torch.softmax(run.trainer.model(point), dim=1)[0, 1]
            np.testing.assert_allclose(view.prediction[row, col], float(expected), rtol=1e-5)
    finally:
        run.trainer.close()


LOADER_2D = """
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset


def points():
    x = torch.arange(600, dtype=torch.float32).reshape(300, 2) / 100
    return x, (x[:, 0] > 1.5).long()


def shuffled():
    x, y = points()
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    return model, DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True), nn.CrossEntropyLoss()


class Endless(IterableDataset):
    def __iter__(self):
        n = 0
        while True:
            x = torch.tensor([n % 97, n % 89], dtype=torch.float32)
            yield x, n % 3
            n += 1


def endless():
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
    return model, DataLoader(Endless(), batch_size=50), nn.CrossEntropyLoss()


def regression():
    x, y = points()
    model = nn.Linear(2, 1)
    return model, DataLoader(TensorDataset(x, y.float()[:, None]), batch_size=32), nn.MSELoss()


def generator():
    x, y = points()
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    return model, (batch for batch in zip(x.split(30), y.split(30))), nn.CrossEntropyLoss()
"""


def test_a_2d_classification_loader_gets_its_decision_boundary(tmp_path):
    """The loader form samples its examples for the boundary as the tensor form gives them."""
    from engine.scenarios import build_user_run
    from engine.views import GRID, boundary_view

    run = build_user_run(f"{write(tmp_path, LOADER_2D)}:shuffled", device="cpu")
    try:
        assert run.boundary_data is not None
        points, labels = run.boundary_data
        # Every one of the 300 examples, in the loader's shuffled order: sorted, they are the data.
        expected = np.arange(600, dtype=np.float32).reshape(300, 2) / 100
        order = np.argsort(points[:, 0])
        assert points.dtype == np.float32 and points.shape == (300, 2)
        np.testing.assert_array_equal(points[order], expected)
        np.testing.assert_array_equal(labels[order], (expected[:, 0] > 1.5).astype(np.int64))
        assert not np.array_equal(points, expected)  # (the loader's own order, not a copy of the data)
        run.trainer.step()
        view = boundary_view(run, 1)
        assert view is not None and view.prediction.shape == (GRID, GRID)
        np.testing.assert_array_equal(view.points, points)
    finally:
        run.trainer.close()


def test_an_endless_loader_gives_a_bounded_sample_and_still_trains(tmp_path):
    from engine.scenarios import build_user_run
    from engine.user_model import BOUNDARY_SAMPLE

    run = build_user_run(f"{write(tmp_path, LOADER_2D)}:endless", device="cpu")
    try:
        points, labels = run.boundary_data
        n = np.arange(BOUNDARY_SAMPLE)
        np.testing.assert_array_equal(points, np.stack([n % 97, n % 89], axis=1).astype(np.float32))
        np.testing.assert_array_equal(labels, n % 3)
        run.trainer.step()
        assert run.trainer.step_count == 1
    finally:
        run.trainer.close()


def test_loaders_that_are_not_2d_classes_get_no_boundary_and_lose_no_batch(tmp_path):
    from engine.scenarios import build_user_run

    path = write(tmp_path, LOADER_2D)
    for function in ("regression", "generator"):
        run = build_user_run(f"{path}:{function}", device="cpu")
        try:
            assert run.boundary_data is None, function
        finally:
            run.trainer.close()
    # A generator can be read once: the sample takes none of its batches (validation took the first).
    um = load_user_model(f"{path}:generator")
    from engine.user_model import loader_boundary_sample

    assert loader_boundary_sample(um.loader) is None
    x, _ = next(um.loader)
    np.testing.assert_array_equal(x.numpy(), np.arange(60, dtype=np.float32).reshape(30, 2) / 100)


def test_odd_loaders_are_skipped_without_an_error():
    from engine.user_model import loader_boundary_sample

    x = torch.randn(8, 2)
    y = torch.arange(8) % 2

    class Raising:
        def __iter__(self):
            yield x, y
            raise OSError("disk gone")

    for loader in ([{"x": x, "y": y}], [(x.numpy(), y.numpy())], [(x, y, y)], [(x[:, :1], y)],
                   [(torch.randn(8, 2, 2), y)], [(x.long(), y)], [(x, y[:4])], Raising(), 42, []):
        assert loader_boundary_sample(loader) is None
    points, labels = loader_boundary_sample([(x, y[:, None]), (x, y)], limit=12)
    np.testing.assert_array_equal(points, torch.cat([x, x[:4]]).numpy())
    np.testing.assert_array_equal(labels, torch.cat([y, y[:4]]).numpy())


def test_sampling_a_loader_leaves_its_batch_order(tmp_path):
    """The sample forks torch's random stream and puts the loader's own generator back, so the
    first batch training takes is the one it would have taken without it."""
    from engine.user_model import loader_boundary_sample

    source = LOADER_2D + """

def seeded():
    x, y = points()
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(5))
    return model, loader, nn.CrossEntropyLoss()
"""
    path = write(tmp_path, source)
    for function in ("shuffled", "seeded"):
        firsts = []
        for sample in (False, True):
            um = load_user_model(f"{path}:{function}")
            torch.manual_seed(3)
            if sample:
                assert loader_boundary_sample(um.loader) is not None
            firsts.append(next(iter(um.loader))[0])
        assert torch.equal(firsts[0], firsts[1]), function


# ----------------------------------------------------------------------------------------- first-batch findings

FIRST_BATCH = """
import torch.nn.functional as F

g = torch.Generator().manual_seed(0)
X = torch.randn(200, 4, generator=g)
CLASSES = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()  # three classes
BINARY = (X[:, 0] > 0).float()


class Sigmoid1(nn.Module):
    '''One output through torch.sigmoid in forward: no module says so.'''
    def __init__(self, squeeze=True, offset=None):
        super().__init__()
        self.fc = nn.Linear(4, 1)
        self.squeeze = squeeze
        self.offset = offset

    def forward(self, x):
        z = self.fc(x)
        out = torch.sigmoid(z) if self.offset is None else 0.01 * z + self.offset
        return out.squeeze(1) if self.squeeze else out


def mlp(*tail):
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3), *tail)


def softmax_cross_entropy():
    return mlp(nn.Softmax(dim=1)), (X, CLASSES), nn.CrossEntropyLoss()

def softmax_into_a_lambda():
    return mlp(nn.Softmax(dim=-1)), (X, CLASSES), lambda out, y: F.cross_entropy(out, y)

def softmax_functional_with_options():
    return mlp(nn.Softmax(dim=1)), (X, CLASSES), nn.CrossEntropyLoss(label_smoothing=0.1)

def sigmoid_bce_with_logits():
    return Sigmoid1(), (X, BINARY), nn.BCEWithLogitsLoss()

def sigmoid_module_bce_functional():
    return nn.Sequential(nn.Linear(4, 1), nn.Sigmoid()), (X, BINARY[:, None]), F.binary_cross_entropy_with_logits

def log_softmax_nll():
    return mlp(nn.LogSoftmax(dim=1)), (X, CLASSES), nn.NLLLoss()

def logits_cross_entropy():
    return mlp(), (X, CLASSES), nn.CrossEntropyLoss()

def positive_logits_cross_entropy():
    return mlp(nn.ReLU()), (X, CLASSES), nn.CrossEntropyLoss()

def positive_logits_bce_with_logits():  # all in (0.4, 0.6), but no sigmoid made them
    return Sigmoid1(offset=0.5), (X, BINARY), nn.BCEWithLogitsLoss()

def regression_mse():  # a sigmoid output in [0, 1], fitted with MSE
    return Sigmoid1(squeeze=False), (X, X[:, :1].sigmoid()), nn.MSELoss()

def probabilities_nll_of_log():
    return mlp(nn.Softmax(dim=1)), (X, CLASSES), lambda out, y: F.nll_loss(torch.log(out), y)
"""


def first_batch_findings(path: Path, function: str) -> dict:
    from engine.user_model import check_user_model

    return {d.code: d for d in check_user_model(load_user_model(f"{path}:{function}")).findings}


@pytest.mark.parametrize("function, loss, applied", [
    ("softmax_cross_entropy", "nn.CrossEntropyLoss", "softmax"),
    ("softmax_into_a_lambda", "loss_fn (its value is F.cross_entropy's)", "softmax"),
    ("softmax_functional_with_options", "nn.CrossEntropyLoss", "softmax"),
    ("sigmoid_bce_with_logits", "nn.BCEWithLogitsLoss", "sigmoid"),
    ("sigmoid_module_bce_functional", "F.binary_cross_entropy_with_logits", "sigmoid"),
])
def test_probabilities_fed_to_a_loss_that_makes_its_own_are_found(tmp_path, function, loss, applied):
    found = first_batch_findings(write(tmp_path, FIRST_BATCH), function)
    d = found["probabilities_to_logit_loss"]
    assert (d.severity, d.step, d.layers) == ("warning", 0, ())
    assert f"{loss} applies a {applied} of its own" in d.message and "\n" not in d.message
    if function.startswith("softmax"):
        assert "each row of 3 is non-negative and sums to 1" in d.message and d.evidence["row_sum_error"] < 1e-6
    else:
        assert "come out of a sigmoid" in d.message and 0 < d.evidence["min_output"] < d.evidence["max_output"] < 1
    assert any("logits" in fix for fix in d.fixes)


@pytest.mark.parametrize("function", [
    "log_softmax_nll", "logits_cross_entropy", "positive_logits_cross_entropy", "positive_logits_bce_with_logits",
    "regression_mse", "probabilities_nll_of_log",
])
def test_log_probabilities_logits_and_regression_are_no_probabilities_finding(tmp_path, function):
    assert "probabilities_to_logit_loss" not in first_batch_findings(write(tmp_path, FIRST_BATCH), function)


SCALES = """
g = torch.Generator().manual_seed(1)
X = torch.randn(300, 5, generator=g)
Y = (X[:, 0] > 0).long()


def model():
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))

def pixels():
    return model(), (torch.rand(300, 5, generator=g) * 255, Y), nn.CrossEntropyLoss()

def one_feature_in_the_tens_of_thousands():
    x = X.clone()
    x[:, 3] *= 1e4
    return model(), (x, Y), nn.CrossEntropyLoss()

def a_narrow_feature_in_a_loader():  # no std above 50, but 1e-4 next to 1: the ratio
    from torch.utils.data import DataLoader, TensorDataset
    x = X.clone()
    x[:, 1] *= 1e-4
    return model(), DataLoader(TensorDataset(x, Y), batch_size=50), nn.CrossEntropyLoss()

def standardised_with_a_constant_feature():
    x = X.clone()
    x[:, 2] = 7.0
    return model(), (x, Y), nn.CrossEntropyLoss()

def raw_pixel_images():
    return (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)),
            (torch.rand(40, 3, 8, 8, generator=g) * 255, Y[:40]), nn.CrossEntropyLoss())

def token_ids():
    return (nn.Sequential(nn.Embedding(5000, 4), nn.Flatten(), nn.Linear(20, 2)),
            (torch.randint(0, 5000, (300, 5), generator=g), Y), nn.CrossEntropyLoss())


class Signal(nn.Module):  # a Conv1d inside a container: (N, channels, length) inputs
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(3, 4, 3), nn.ReLU())
        self.head = nn.Linear(4 * 18, 2)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))


def conv1d_channel_in_the_thousands():
    x = torch.randn(300, 3, 20, generator=g)
    x[:, 2] *= 1e3
    return Signal(), (x, Y), nn.CrossEntropyLoss()


def a_year_column():  # little spread, far from zero
    x = X.clone()
    x[:, 4] = 2000 + 10 * x[:, 4]
    return model(), (x, Y), nn.CrossEntropyLoss()
"""


def test_inputs_far_from_unit_scale_are_found_naming_the_feature_and_its_std(tmp_path):
    path = write(tmp_path, SCALES)
    for function in ("pixels", "one_feature_in_the_tens_of_thousands", "a_narrow_feature_in_a_loader",
                     "raw_pixel_images"):
        um = load_user_model(f"{path}:{function}")
        x = (um.x if um.x is not None else next(iter(um.loader))[0]).double().numpy()
        axis = 1 if x.ndim == 4 else -1
        std = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1).std(axis=1)  # (numpy: population std)
        widest, narrowest = int(np.argmax(std)), int(np.argmin(std))
        d = first_batch_findings(path, function)["input_scale"]
        assert (d.severity, d.step) == ("warning", 0) and "\n" not in d.message
        word = "channel" if x.ndim == 4 else "feature"
        assert d.evidence[word] == widest and d.evidence["std"] == pytest.approx(std[widest], rel=1e-4)
        assert f"input {word} {widest} has a standard deviation of {std[widest]:.3g}" in d.message, d.message
        if function == "a_narrow_feature_in_a_loader":
            assert widest != 1 and narrowest == 1 and d.evidence["examples"] == 50  # (the first batch)
            assert d.evidence["narrowest_std"] == pytest.approx(std[1], rel=1e-4)
            assert f"feature 1 one of {std[1]:.3g}" in d.message and d.evidence["ratio"] > 1e3
        else:
            assert d.evidence["std"] > 50
    assert first_batch_findings(path, "one_feature_in_the_tens_of_thousands")["input_scale"].evidence["feature"] == 3
    for function in ("standardised_with_a_constant_feature", "token_ids"):
        assert first_batch_findings(path, function) == {}, function


def test_a_conv1d_inputs_scales_are_compared_across_its_channels_not_positions(tmp_path):
    path = write(tmp_path, SCALES)
    x = load_user_model(f"{path}:conv1d_channel_in_the_thousands").x.double().numpy()
    std = x.transpose(1, 0, 2).reshape(3, -1).std(axis=1)  # per channel, over examples and positions
    d = first_batch_findings(path, "conv1d_channel_in_the_thousands")["input_scale"]
    assert d.evidence["channel"] == int(np.argmax(std)) == 2 and d.evidence["std"] == pytest.approx(std[2], rel=1e-4)
    assert "input channel 2 has a standard deviation of" in d.message, d.message


def test_a_feature_far_from_zero_with_little_spread_is_found(tmp_path):
    path = write(tmp_path, SCALES)
    x = load_user_model(f"{path}:a_year_column").x.double().numpy()
    d = first_batch_findings(path, "a_year_column")["input_scale"]
    assert x[:, 4].std() < 50 and d.severity == "warning" and "\n" not in d.message
    assert d.evidence["feature"] == 4 and d.evidence["mean"] == pytest.approx(x[:, 4].mean(), rel=1e-6)
    assert d.evidence["std"] == pytest.approx(x[:, 4].std(), rel=1e-4)
    assert f"input feature 4 has a mean of {x[:, 4].mean():.4g}" in d.message, d.message


def test_no_built_in_data_set_is_called_badly_scaled():
    from engine.data import DATASETS, DataSpec, make_dataset
    from engine.scenarios import SCENARIOS
    from engine.user_model import input_scale_finding

    specs = {DataSpec(name) for name in DATASETS} | {scenario.data for scenario in SCENARIOS.values()}
    for spec in specs:
        x = make_dataset(spec).x_train
        assert input_scale_finding(x) is None and input_scale_finding(x[:64]) is None, spec


# ------------------------------------------------------------------------------------- several inputs or targets

SEVERAL = """
from torch.utils.data import DataLoader, TensorDataset

g = torch.Generator().manual_seed(0)
X1, X2 = torch.randn(64, 4, generator=g), torch.randn(64, 6, generator=g)
Y = (X1[:, 0] > 0).long()


class Towers(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 8), nn.Linear(6, 8), nn.Linear(16, 2)

    def forward(self, x1, x2=None):
        if x2 is None:
            x1, x2 = x1
        return self.head(torch.cat([self.a(x1), self.b(x2)], 1))


def tuple_inputs():
    return Towers(), ((X1, X2), Y), nn.functional.cross_entropy


def list_inputs():
    return Towers(), ([X1, X2], Y), nn.functional.cross_entropy


def dict_inputs():
    return Towers(), ({"a": X1, "b": X2}, Y), nn.functional.cross_entropy


def two_targets():
    return nn.Linear(4, 2), (X1, (Y, X2)), nn.functional.cross_entropy


def loader_of_tuple_inputs():
    batches = [((X1[i:i + 16], X2[i:i + 16]), Y[i:i + 16]) for i in range(0, 64, 16)]
    return Towers(), batches, nn.functional.cross_entropy


def validation_of_tuple_inputs():
    return nn.Linear(4, 2), (X1, Y), nn.functional.cross_entropy, ((X1, X2), Y)


def two_batches():
    return nn.Linear(4, 2), [(X1[:32], Y[:32]), (X1[32:], Y[32:])], nn.functional.cross_entropy
"""

_ONE_INPUT = ("Glassbox feeds the model one input tensor: join them into one (torch.cat along the features) and "
              "split it again in forward")


@pytest.mark.parametrize("function, message", [
    ("tuple_inputs", f"X is a tuple of 2 tensors; {_ONE_INPUT}"),
    ("list_inputs", f"X is a list of 2 tensors; {_ONE_INPUT}"),
    ("dict_inputs", f"X is a dict of 2 tensors; {_ONE_INPUT}"),
    ("two_targets", "y is a tuple of 2 tensors; Glassbox hands loss_fn one target tensor: join them into one "
                    "(torch.cat along the features) and split it again in loss_fn"),
    ("validation_of_tuple_inputs", f"X_val is a tuple of 2 tensors; {_ONE_INPUT}"),
])
def test_several_inputs_or_targets_in_the_tensor_form_are_one_line_not_a_loader_of_two_batches(
        tmp_path, function, message):
    """(X, y) with X a tuple of tensors was taken for a loader of two batches: the model got x1 and
    x2 was the targets, and it failed in the user's forward."""
    path = write(tmp_path, SEVERAL)
    assert load_error(f"{path}:{function}") == f"{path}: {message}"


def test_a_loader_of_several_inputs_says_so_as_the_tensor_form_does_and_two_batches_stay_a_loader(tmp_path):
    path = write(tmp_path, SEVERAL)
    assert validate_error(f"{path}:loader_of_tuple_inputs") == (
        f"{path}: the batch's x is a tuple of 2 tensors; {_ONE_INPUT}")
    um = load_user_model(f"{path}:two_batches")  # a list of two (x, y) batches is a (tiny) loader
    assert um.x is None and len(um.loader) == 2
    x, y = um.loader[1]
    assert x.shape == (32, 4) and torch.equal(y, (x[:, 0] > 0).long())
    validate_user_model(um)


# ------------------------------------------------------------------------------------- time-first batches

TIME_FIRST = """
g = torch.Generator().manual_seed(0)


class Classifier(nn.Module):  # x of (T, N, 5): one class per sequence
    def __init__(self, batch_first=False):
        super().__init__()
        self.rnn = nn.GRU(5, 8, batch_first=batch_first)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[-1])


class Tagger(nn.Module):  # x of (T, N, 5): one class per token, flattened (T*N, 2)
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(5, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0]).reshape(-1, 2)


def batches(T=20, N=7, scale=1.0):
    out = []
    for _ in range(3):
        x = torch.randn(T, N, 5, generator=g) * scale
        out.append((x, (x[0, :, 0] > 0).long()))
    return out


def sequences():
    return Classifier(), batches(), nn.functional.cross_entropy


def wide_sequences():
    return Classifier(), batches(scale=1000.0), nn.functional.cross_entropy


def tokens():
    data = [(x, (x[..., 0] > 0).long().reshape(-1)) for x, _ in batches()]
    return Tagger(), data, nn.functional.cross_entropy


def counts_differ():
    return Classifier(), [(x, torch.zeros(32, dtype=torch.long)) for x, _ in batches()], nn.functional.cross_entropy


def tensor_form():
    x, y = batches()[0]
    return Classifier(), (x, y), nn.functional.cross_entropy
"""


def test_a_loaders_time_first_batches_pass_the_check_and_train_on_the_right_numbers(tmp_path):
    """x of (T, N, ...) with targets of (N,) was turned down: 'x has 20 examples but y has 7'. (One
    target per token flattened to (T*N,) can't be told from a batch-first model's by shapes: it is
    turned down, as the next test shows.)"""
    from engine.scenarios import build_user_run

    path = write(tmp_path, TIME_FIRST)
    for function in ("sequences",):
        ref = f"{path}:{function}"
        validate_user_model(load_user_model(ref))
        um = load_user_model(ref, seed=0)  # (the weights build_user_run trains, its seed 0)
        x, y = um.loader[0]
        with torch.no_grad():
            out = um.model(x)
        expected = float(nn.functional.cross_entropy(out, y))
        run = build_user_run(ref, device="cpu")
        try:
            run.trainer.step(capture=False)
            loss, accuracy = run.trainer.flush_scalars()[0]
        finally:
            run.trainer.close()
        assert loss == pytest.approx(expected, rel=1e-6), function
        assert accuracy == pytest.approx(float((out.argmax(-1) == y).float().mean())), function


def test_batches_whose_examples_dont_line_up_say_how_to_stack_them(tmp_path):
    path = write(tmp_path, TIME_FIRST)
    assert validate_error(f"{path}:counts_differ") == (
        f"{path}: the batch's x has 20 examples along its first dimension but the batch's y has 32 "
        "(shapes (20, 7, 5) and (32,)); stack the examples along x's first dimension, or time first: "
        "x of (T, N, ...) with y of (N, ...)")
    assert validate_error(f"{path}:tokens") == (  # (a target per token flattened: shapes can't tell)
        f"{path}: the batch's x has 20 examples along its first dimension but the batch's y has 140 "
        "(shapes (20, 7, 5) and (140,)); stack the examples along x's first dimension, or time first: "
        "x of (T, N, ...) with y of (N, ...)")
    assert load_error(f"{path}:tensor_form") == (  # (the tensor form is sliced along its first dimension)
        f"{path}: X has 20 examples but y has 7 (shapes (20, 7, 5) and (7,)); "
        "examples are stacked along the first dimension of both")


def test_the_input_scale_of_time_first_batches_counts_their_examples(tmp_path):
    path = write(tmp_path, TIME_FIRST)
    d = first_batch_findings(path, "wide_sequences")["input_scale"]
    x = load_user_model(f"{path}:wide_sequences").loader[0][0].double().numpy()
    std = x.reshape(-1, 5).std(axis=0)
    assert d.evidence["examples"] == 7  # (N, not T = 20)
    assert d.evidence["feature"] == int(np.argmax(std)) and d.evidence["std"] == pytest.approx(std.max(), rel=1e-4)


# ------------------------------------------------------------------------------------- batch norm meets one example

BATCH_NORM = """
from torch.utils.data import DataLoader, TensorDataset

g = torch.Generator().manual_seed(0)


def model():
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))


def last_batch_of_one():
    x = torch.randn(65, 4, generator=g)
    return model(), DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=64), nn.functional.cross_entropy


def one_example():
    return model(), (torch.randn(1, 4, generator=g), torch.tensor([1])), nn.functional.cross_entropy


def one_example_without_running_statistics():  # (normalised with the batch's own statistics even in eval mode)
    m = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16, track_running_stats=False), nn.Linear(16, 2))
    return m, (torch.randn(1, 4, generator=g), torch.tensor([1])), nn.functional.cross_entropy


def one_example_fine_tuning():  # the batch norm kept in eval mode, on its running statistics
    m = model()
    m[1].eval()
    return m, (torch.randn(1, 4, generator=g), torch.tensor([1])), nn.functional.cross_entropy
"""

_BATCH_OF_ONE = ("a batch of one example can't be normalised in training mode: use batches of two or more (pass "
                 "drop_last=True to a DataLoader whose last batch holds one, or a batch size that divides the data)")


def test_a_batch_norm_meeting_a_last_batch_of_one_is_named_with_its_type_and_the_cure(tmp_path):
    from engine.scenarios import build_user_run
    from engine.trainer import StepError

    path = write(tmp_path, BATCH_NORM)
    run = build_user_run(f"{path}:last_batch_of_one", device="cpu")
    try:
        run.trainer.step()
        with pytest.raises(StepError) as info:
            run.trainer.step()
    finally:
        run.trainer.close()
    assert info.value.module == "1" and info.value.step == 2
    assert info.value.message == (
        "ValueError during forward in 1 (BatchNorm1d) at step 2: Expected more than 1 value per channel when "
        f"training, got input size torch.Size([1, 16]): {_BATCH_OF_ONE}")


def test_one_example_for_a_training_batch_norm_is_found_by_the_check(tmp_path):
    from engine.scenarios import build_user_run

    path = write(tmp_path, BATCH_NORM)
    assert validate_error(f"{path}:one_example") == (
        f"{path}: 1 (BatchNorm1d) gets an input of shape (1, 16) on the first batch, one value per channel: "
        f"{_BATCH_OF_ONE}")
    assert validate_error(f"{path}:one_example_without_running_statistics") == (
        f"{path}: 1 (BatchNorm1d) gets an input of shape (1, 16) on the first batch, one value per channel: "
        f"{_BATCH_OF_ONE}")
    run = build_user_run(f"{path}:one_example_fine_tuning", device="cpu")  # (eval mode normalises one)
    try:
        run.trainer.step()
        assert run.trainer.step_count == 1 and not run.trainer.model[1].training
    finally:
        run.trainer.close()


# ------------------------------------------------------------------------------------- a loss without a gradient

NO_GRADIENT = """
def error_rate(out, y):
    return (out.argmax(1) != y).float().mean()


class Frozen(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 2)

    def forward(self, x):
        return self.layer(x).detach()


def data():
    x = torch.randn(32, 4)
    return x, (x[:, 0] > 0).long()


def argmax_loss():
    return nn.Linear(4, 2), data(), error_rate


def detached_output():
    return Frozen(), data(), nn.functional.cross_entropy


def fine():
    return nn.Linear(4, 2), data(), nn.functional.cross_entropy
"""


def test_a_loss_that_doesnt_reach_the_parameters_is_found_by_the_check(tmp_path):
    """It passed the check (run under no_grad) and failed at step 1 with torch's 'element 0 of
    tensors does not require grad'."""
    path = write(tmp_path, NO_GRADIENT)
    steps = "a step no gradient passes (argmax, a comparison, rounding, .item(), .detach() or torch.no_grad())"
    assert validate_error(f"{path}:argmax_loss") == (
        f"{path}:{line_of(path, 'def error_rate')}: the loss doesn't depend on the model's parameters: loss_fn "
        f"computes it through {steps}, so training has no gradient to follow")
    assert validate_error(f"{path}:detached_output") == (
        f"{path}:{line_of(path, 'def forward')}: the model's output doesn't depend on its parameters: "
        f"Frozen.forward at {path}:{line_of(path, 'def forward')} computes it through {steps}, so training "
        "has no gradient to follow")
    um = load_user_model(f"{path}:fine")
    validate_user_model(um)  # (the check's graph leaves no gradient behind)
    assert all(p.grad is None for p in um.model.parameters())
