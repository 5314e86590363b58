"""A model file may return validation data as a fourth item: it is checked like the training data,
the run validates on it, and Health can then find overfitting in your own model."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from engine.scenarios import USER_VAL_EVERY, build_user_run
from engine.user_model import VAL_MAX_EXAMPLES, UserModelError, check_user_model, load_user_model

MODELS = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

g = torch.Generator().manual_seed(0)
X, Y = torch.randn(100, 2, generator=g), torch.randint(0, 2, (100,), generator=g)  # labels of pure noise
X_VAL, Y_VAL = torch.randn(300, 2, generator=g), torch.randint(0, 2, (300,), generator=g)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2))


def tensors():
    return mlp(), (X, Y), nn.CrossEntropyLoss(), (X_VAL, Y_VAL)


def loaders():
    big = torch.randn(3000, 2, generator=g)
    val = DataLoader(TensorDataset(big, (big[:, 0] > 0).long()), batch_size=128)
    return mlp(), DataLoader(TensorDataset(X, Y), batch_size=50), nn.CrossEntropyLoss(), val


def features_differ():
    return mlp(), (X, Y), nn.CrossEntropyLoss(), (torch.randn(10, 3), torch.zeros(10, dtype=torch.long))


def loader_features_differ():
    return (mlp(), DataLoader(TensorDataset(X, Y), batch_size=50), nn.CrossEntropyLoss(),
            (torch.randn(10, 3), torch.zeros(10, dtype=torch.long)))


def nan_in_validation():
    x = X_VAL.clone()
    x[3, 1] = float("nan")
    return mlp(), (X, Y), nn.CrossEntropyLoss(), (x, Y_VAL)


def counts_differ():
    return mlp(), (X, Y), nn.CrossEntropyLoss(), (X_VAL, Y_VAL[:-1])


def not_data():
    return mlp(), (X, Y), nn.CrossEntropyLoss(), 0.2
"""


@pytest.fixture
def path(tmp_path: Path) -> Path:
    file = tmp_path / "models.py"
    file.write_text(textwrap.dedent(MODELS))
    return file


def test_validation_tensors_and_a_validation_loader_are_read(path: Path) -> None:
    um = load_user_model(f"{path}:tensors")
    namespace: dict = {}
    exec(textwrap.dedent(MODELS), namespace)  # (the file's own tensors, independently)
    assert torch.equal(um.val[0], namespace["X_VAL"]) and torch.equal(um.val[1], namespace["Y_VAL"])
    um = load_user_model(f"{path}:loaders")
    dataset = namespace["loaders"]()[3].dataset
    assert len(um.val[0]) == VAL_MAX_EXAMPLES == 2048 < len(dataset)  # (its first batches, joined)
    assert torch.equal(um.val[0], dataset.tensors[0][:2048]) and torch.equal(um.val[1], dataset.tensors[1][:2048])
    assert load_user_model(f"{path}:tensors").val is not None and check_user_model(um).findings == ()


@pytest.mark.parametrize("function, message", [
    ("features_differ", "the validation data's examples are shaped X_val (3,), y_val (), the training data's X (2,)"),
    ("nan_in_validation", "X_val contains non-finite values: 1 NaN, 0 Inf (of 600)"),
    ("counts_differ", "X_val has 300 examples but y_val has 299"),
    ("not_data", "returned a float as validation data; expected (X_val, y_val) tensors"),
])
def test_bad_validation_data_is_named_in_one_line(path: Path, function: str, message: str) -> None:
    with pytest.raises(UserModelError) as info:
        load_user_model(f"{path}:{function}")
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_validation_data_the_model_cant_take_is_found_before_training(path: Path) -> None:
    um = load_user_model(f"{path}:loader_features_differ")  # (a loader's examples have no shape to compare)
    with pytest.raises(UserModelError, match=r"the validation data fails where the training data runs: .*"
                                             r"\(X_val batch of shape \(10, 3\), y_val of shape \(10,\)\)"):
        check_user_model(um)


def test_a_user_run_validates_on_its_data_and_health_finds_it_overfitting(path: Path) -> None:
    """Every ``USER_VAL_EVERY`` steps the run's validation loss is the loss of the model as it
    stands on the file's X_val (computed here directly); memorising noise, it overfits, and the
    report (as the app's Health) says so."""
    from engine.report import collect_report

    run = build_user_run(f"{path}:tensors", device="cpu", hyper={"lr": 3e-3, "batch_size": 100})
    try:
        x_val, y_val = load_user_model(f"{path}:tensors").val
        for _ in range(USER_VAL_EVERY):
            run.trainer.step()
        loss, accuracy, step = run.trainer.last_val
        with torch.no_grad():
            out = run.trainer.model.eval()(x_val)
        run.trainer.model.train()
        assert step == USER_VAL_EVERY
        assert loss == pytest.approx(float(torch.nn.functional.cross_entropy(out, y_val)), rel=1e-5)
        assert accuracy == pytest.approx(float((out.argmax(1) == y_val).float().mean()), abs=1e-6)
        report = collect_report(run, 400, 10)
    finally:
        run.trainer.close()
    assert report["validation"]["step"] == list(range(2 * USER_VAL_EVERY, USER_VAL_EVERY + 401, USER_VAL_EVERY))
    (found,) = [d for d in report["diagnoses"] if d["code"] == "overfitting"]
    assert found["evidence"]["val_loss"] > 1.5 * found["evidence"]["best_val_loss"]


def test_validation_runs_the_model_a_chunk_at_a_time_and_takes_the_loss_on_the_whole_set(path: Path) -> None:
    """300 validation examples go through the model as 256 and 44 (a big model's forward on
    thousands at once could run out of memory); the loss is still the whole set's."""
    from engine.trainer import VAL_CHUNK

    run = build_user_run(f"{path}:tensors", device="cpu")
    sizes: list[int] = []
    handle = run.trainer.model.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    try:
        loss, _ = run.trainer.validate()
        x_val, y_val = load_user_model(f"{path}:tensors").val
        with torch.no_grad():
            expected = float(torch.nn.functional.cross_entropy(run.trainer.model.eval()(x_val), y_val))
    finally:
        handle.remove()
        run.trainer.close()
    assert sizes[:2] == [VAL_CHUNK, 300 - VAL_CHUNK] == [256, 44]
    assert loss == pytest.approx(expected, rel=1e-6)


TIME_FIRST = """
import torch
from torch import nn

g = torch.Generator().manual_seed(0)


class Classifier(nn.Module):  # x of (T, N, 5)
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(5, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0][-1])


def batches(n):
    out = []
    for _ in range(n):
        x = torch.randn(20, 7, 5, generator=g)
        out.append((x, (x[0, :, 0] > 0).long()))
    return out


def time_first_validation():
    return Classifier(), batches(3), nn.functional.cross_entropy, batches(2)
"""


def test_a_time_first_validation_loader_is_named_in_one_line(tmp_path: Path) -> None:
    """The trainer reads the validation set along its first dimension (a slice of the first 2,048
    examples, chunks of 256): joined along dimension 0, time-first batches would be validated time
    step by time step, so they are turned down, the training loader's alike batches accepted."""
    file = tmp_path / "time_first.py"
    file.write_text(textwrap.dedent(TIME_FIRST))
    with pytest.raises(UserModelError) as info:
        load_user_model(f"{file}:time_first_validation")
    assert str(info.value) == (
        f"{file}: the validation loader's batches are time first (x of shape (20, 7, 5), y of shape (7,)), and "
        "Glassbox joins validation batches along x's first dimension: collate them batch first, or leave the "
        "validation data out")
