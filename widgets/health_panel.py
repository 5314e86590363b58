"""What the diagnostics found: each problem with its layers, evidence and fixes."""
from __future__ import annotations

import html
from typing import TYPE_CHECKING

from PySide6 import QtCore, QtWidgets

from engine.snapshot import ViewData
from widgets.base import View
from widgets.findings import SEVERITY_COLOURS

if TYPE_CHECKING:  # a value type only; the widget never runs engine code
    from engine.diagnostics import Diagnosis

__all__ = ["HealthPanel"]

_HEALTHY = "No problems found so far."


class HealthPanel(View):
    """Lists current findings, errors first; clicking a layer name selects that layer."""

    title = "Health"

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.browser = QtWidgets.QTextBrowser(self)
        self.browser.setOpenLinks(False)
        self.browser.anchorClicked.connect(self._clicked)
        self.browser.setStyleSheet("QTextBrowser { background: #15171c; color: #d6d9e0; border: none; }")
        self._layout.addWidget(self.browser, 1)
        self.finish_layout()
        self._shown: tuple = ()
        self._step: int | None = None
        self._render(())

    @property
    def findings(self) -> tuple["Diagnosis", ...]:
        return self._shown

    def draw(self, data: ViewData) -> None:
        findings = tuple(data.snapshot.diagnoses)
        if findings == self._shown and self._step is not None:
            return
        self._step = data.snapshot.step
        self._render(findings)

    def _render(self, findings: tuple) -> None:
        self._shown = findings
        if not findings:
            self.browser.setHtml(f"<p style='color:#8fd18f'>✓ {_HEALTHY}</p>"
                                 "<p style='color:#9aa0aa'>Glassbox watches gradients, activations, "
                                 "updates and the loss as the network trains, and explains here what "
                                 "it finds.</p>")
            self.readout.setText(" ")
            return
        parts = []
        for item in findings:
            colour = SEVERITY_COLOURS.get(item.severity, "#d6d9e0")
            layers = ", ".join(f"<a href='layer:{html.escape(name)}' style='color:#9cc9ff'>{html.escape(name)}</a>"
                               for name in item.layers[:6])
            if len(item.layers) > 6:
                layers += f" and {len(item.layers) - 6} more"
            evidence = ", ".join(f"{html.escape(k)} = {v:.3g}" for k, v in list(item.evidence.items())[:6])
            if evidence:  # (its numbers are those of when it was found, not of the step on screen)
                evidence = f"when found: {evidence}"
            span = "before training" if item.step == 0 else (
                f"from step {item.step}" + (f", last seen at step {item.last_step}"
                                            if item.last_step > item.step else ""))
            fixes = "".join(f"<li>{html.escape(fix)}</li>" for fix in item.fixes)
            parts.append(
                f"<p><b style='color:{colour}'>{item.severity.upper()}</b> "
                f"<b>{html.escape(item.code.replace('_', ' '))}</b> · {span}"
                f"{' · ' + layers if layers else ''}<br>{html.escape(item.message)}"
                f"{'<br><span style=color:#9aa0aa>' + evidence + '</span>' if evidence else ''}</p>"
                f"{'<ul style=margin-top:0>' + fixes + '</ul>' if fixes else ''}")
        self.browser.setHtml("".join(parts))
        self.readout.setText(f"{len(findings)} finding{'s' if len(findings) != 1 else ''}")

    def _clicked(self, url: QtCore.QUrl) -> None:
        text = url.toString()
        if text.startswith("layer:"):
            self.layer_selected.emit(text[len("layer:"):])
