"""The lessons gallery in the app: the panel, one-at-a-time runs, and two runs side by side."""
from __future__ import annotations

import threading

import pytest

from app.lesson_panel import LessonPanel
from app.main_window import VIEW_CLASSES, MainWindow
from engine.lessons import LESSONS
from engine.scenarios import SCENARIOS


def test_panel_explains_the_lesson_and_asks_for_its_runs(qtbot) -> None:
    panel = LessonPanel()
    qtbot.addWidget(panel)
    panel.set_lessons(LESSONS, {name: sc.title for name, sc in SCENARIOS.items()},
                      {key: cls.title for key, cls in VIEW_CLASSES.items()})
    panel.show_lesson("initialization")
    lesson = LESSONS["initialization"]
    text = panel.text.toPlainText()
    assert lesson.title in text and "What to expect" in text and "Activations" in text
    assert [b.text() for b in panel.run_buttons] == [f"▶ {SCENARIOS[n].title}" for n in lesson.runs]
    with qtbot.waitSignal(panel.run_requested, timeout=1000) as blocker:
        panel.run_buttons[3].click()
    assert blocker.args == ["init-zeros"]
    panel.right.setCurrentIndex(2)
    with qtbot.waitSignal(panel.compare_requested, timeout=1000) as blocker:
        panel.compare_button.click()
    assert blocker.args == ["init-he-half", "init-he-double"]


@pytest.fixture
def window(qtbot):
    win = MainWindow(remember_layout=False)
    qtbot.addWidget(win)
    win.show()
    yield win
    win.shutdown()


def training_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("glassbox"))


def test_side_by_side_trains_two_runs_and_stops_the_second(qtbot, window: MainWindow) -> None:
    window.start_engine(scenario="xor-mlp", device="cpu", play=False)
    qtbot.waitUntil(lambda: window.bridge.latest is not None, timeout=20000)
    window.compare("deep-sigmoid", "deep-relu-he")
    assert window.partner is not None and window.docks["compare"].isVisible()
    qtbot.waitUntil(lambda: window.bridge.latest.scenario == "deep-sigmoid" and window.bridge.latest.step >= 20
                    and window.partner.latest is not None and window.partner.latest.step >= 20, timeout=60000)
    window.pause()
    qtbot.waitUntil(lambda: window.bridge.latest.state == "paused" and window.partner.latest.state == "paused",
                    timeout=10000)
    assert window.partner.latest.scenario == "deep-relu-he"
    # The sigmoid stack's vanishing gradients are found, and Compare, which was asked for, stays in front.
    assert any(d.code == "vanishing_gradients" for d in window.bridge.latest.diagnoses)
    assert not window.comparison.visibleRegion().isEmpty()
    compare = window.comparison
    qtbot.waitUntil(lambda: all(s is not None for s in compare.sides), timeout=5000)
    qtbot.waitUntil(lambda: compare.gradient_norms(0).size == 11 and compare.gradient_norms(1).size == 11,
                    timeout=5000)
    # The sigmoid stack's gradient collapses toward the input; the ReLU stack's does not.
    sigmoid, relu = compare.gradient_norms(0), compare.gradient_norms(1)
    assert sigmoid[0] < 1e-4 * sigmoid[-1] and relu[0] > 1e-2 * relu[-1]
    assert "10 sigmoid layers" in compare.summaries[0].text()
    # The main views follow the first run.
    assert window.bridge.latest.scenario == "deep-sigmoid"
    # Transport reaches both runs: one step each.
    steps = (window.bridge.latest.step, window.partner.latest.step)
    window.step_once()
    qtbot.waitUntil(lambda: window.bridge.latest.step == steps[0] + 1 and window.partner.latest.step == steps[1] + 1,
                    timeout=10000)
    before = training_threads()
    window.run_scenario("deep-relu-he")
    assert window.partner is None and training_threads() == before - 1
    assert not window.lesson_panel.stop_button.isEnabled()
    qtbot.waitUntil(lambda: window.bridge.latest.scenario == "deep-relu-he", timeout=20000)
    assert not window.errors


def test_lessons_menu_opens_the_lesson(qtbot, window: MainWindow) -> None:
    window.start_engine(scenario="xor-mlp", device="cpu", play=False)
    combo = window.scenario
    names = [combo.itemData(i) for i in range(combo.count())]
    assert sorted(n for n in names if n and n != "Open model file…") == sorted(SCENARIOS)
    assert names.index("long-range-gru") < names.index(None) < names.index("xor-linear")  # a separator
    actions = {a.text(): a for a in window.lessons_menu.actions()}
    assert set(actions) == {lesson.title for lesson in LESSONS.values()}
    actions[LESSONS["recurrent"].title].trigger()
    assert window.lesson_panel.lesson.name == "recurrent"
    assert window.docks["lessons"].isVisible()
