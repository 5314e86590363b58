from tests.widgets.test_gradient_flow import *
from PySide6 import QtCore

def test_dbg(qtbot):
    view = GradientFlow(); qtbot.addWidget(view); view.resize(800, 600)
    view.render(make_data(make_frame(), make_series()))
    view.show(); qtbot.waitExposed(view)
    got = []
    view.canvas.scene().sigMouseClicked.connect(lambda ev: got.append((ev.scenePos(), ev.double())))
    view.layer_selected.connect(lambda n: got.append(n))
    for (plot, x, y) in ((view.heat_plot, 1500.0, 1.5), (view.bar_plot, 3.0, -3.0)):
        sp = plot.getViewBox().mapViewToScene(QtCore.QPointF(x, y))
        print(plot.viewRange(), sp, plot.sceneBoundingRect())
        click(qtbot, view, plot, x, y)
        pass
        print(got); got.clear()
    assert 0
