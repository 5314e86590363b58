"""Run files open in the app whoever wrote them: the window itself, or `glassbox report --save`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from app.exporting import restore_run_factory, saved_view
from engine.report import main as report_main


def test_a_run_saved_by_the_report_opens_like_one_the_app_saved(tmp_path: Path) -> None:
    path = tmp_path / "xor.glassbox"
    assert report_main(["--scenario", "xor-mlp", "--steps", "6", "--save", str(path)]) == 0
    view = saved_view(str(path))
    snapshot = view.snapshot
    assert snapshot.step == 6 and snapshot.scenario == "xor-mlp"
    names = [layer.name for layer in snapshot.layers]
    assert names and all(layer.params > 0 for layer in snapshot.layers if layer.role == "param")
    # The first layer's weights are what the Weights view shows, with that layer selected.
    first = next(layer for layer in snapshot.layers if layer.weight_shape)
    assert view.selected_layer == first.name == snapshot.tensors.layer
    assert snapshot.tensors.weight.shape == first.weight_shape
    assert len(view.series["loss"].values) == 6 and np.isfinite(view.series["train_acc"].values).all()
    factory, current = restore_run_factory(str(path), "cpu")
    assert current == {"kind": "scenario", "name": "xor-mlp", "model": None}
    assert factory().name == "xor-mlp"


def test_a_user_model_run_saved_by_the_report_reopens_its_model(tmp_path: Path, monkeypatch) -> None:
    model = tmp_path / "mine.py"
    model.write_text("import torch\nfrom torch import nn\n\ndef build():\n"
                     "    return nn.Linear(3, 2), (torch.randn(16, 3), torch.randint(0, 2, (16,))), "
                     "nn.functional.cross_entropy\n")
    monkeypatch.chdir(tmp_path)  # a relative reference is stored as an absolute one
    path = tmp_path / "mine.glassbox"
    assert report_main(["--model", "mine.py:build", "--steps", "3", "--save", str(path)]) == 0
    monkeypatch.chdir(Path(__file__).parent)
    view = saved_view(str(path))
    assert [layer.name for layer in view.snapshot.layers] == ["<model>"]
    assert view.snapshot.tensors.weight.shape == (2, 3)
    factory, current = restore_run_factory(str(path), "cpu")
    assert current["kind"] == "user" and current["name"] == f"{model}:build"
    assert factory().trainer.model.weight.shape == (2, 3)
