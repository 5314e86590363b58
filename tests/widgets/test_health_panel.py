"""The health panel lists findings with evidence and fixes, and selects a clicked layer."""
from __future__ import annotations

from PySide6 import QtCore

from engine.diagnostics import Diagnosis
from engine.snapshot import Hyper, Metrics, Snapshot, ViewData
from widgets.health_panel import HealthPanel


def data(findings: tuple) -> ViewData:
    snap = Snapshot(run_id=1, step=40, state="running", scenario="s", device="cpu", layers=(),
                    metrics=Metrics(train_loss=1.0), hyper=Hyper(), diagnoses=findings)
    return ViewData(snapshot=snap)


FINDING = Diagnosis(code="vanishing_gradients", severity="warning", layers=("layers.0.linear", "layers.1.linear"),
                    step=12, message="The first layers barely learn.", evidence={"first_over_last": 3.2e-06},
                    fixes=("Use ReLU with He initialisation.", "Add normalization."))


def test_healthy_run_says_so(qtbot) -> None:
    panel = HealthPanel()
    qtbot.addWidget(panel)
    panel.render(data(()))
    assert "No problems found" in panel.browser.toPlainText()


def test_findings_show_message_evidence_fixes_and_layers(qtbot) -> None:
    panel = HealthPanel()
    qtbot.addWidget(panel)
    panel.render(data((FINDING,)))
    text = panel.browser.toPlainText()
    assert "WARNING" in text and "vanishing gradients" in text and "from step 12" in text
    assert "layers.0.linear" in text and "when found: first_over_last = 3.2e-06" in text
    assert "last seen" not in text  # (found at one step only)
    assert "Use ReLU with He initialisation." in text and "Add normalization." in text
    assert panel.readout_text() == "1 finding"
    with qtbot.waitSignal(panel.layer_selected, timeout=1000) as blocker:
        panel.browser.anchorClicked.emit(QtCore.QUrl("layer:layers.1.linear"))
    assert blocker.args == ["layers.1.linear"]


def test_a_finding_says_until_when_it_held(qtbot) -> None:
    import dataclasses

    panel = HealthPanel()
    qtbot.addWidget(panel)
    panel.render(data((dataclasses.replace(FINDING, last_step=31),)))
    assert "from step 12, last seen at step 31" in panel.browser.toPlainText()
