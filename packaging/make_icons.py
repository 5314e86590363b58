"""Render assets/glassbox.svg to assets/glassbox.png (256×256) and packaging/glassbox.ico.

Run once after editing the SVG: `QT_QPA_PLATFORM=offscreen python packaging/make_icons.py`.
(macOS: make packaging/glassbox.icns from the PNG with `iconutil`, see packaging/README.md.)
"""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image
from PySide6 import QtCore, QtGui, QtSvg

ROOT = Path(__file__).resolve().parent.parent


def render(size: int) -> Image.Image:
    image = QtGui.QImage(size, size, QtGui.QImage.Format.Format_ARGB32)
    image.fill(QtCore.Qt.GlobalColor.transparent)
    painter = QtGui.QPainter(image)
    painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
    QtSvg.QSvgRenderer(str(ROOT / "assets" / "glassbox.svg")).render(painter)
    painter.end()
    buffer = QtCore.QBuffer()
    buffer.open(QtCore.QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    return Image.open(io.BytesIO(bytes(buffer.data()))).convert("RGBA")


def main() -> None:
    _app = QtGui.QGuiApplication([])
    big = render(256)
    # A 256-colour palette keeps the PNG a few KB without visible banding on this flat drawing.
    big.quantize(colors=128, method=Image.Quantize.FASTOCTREE).save(ROOT / "assets" / "glassbox.png", optimize=True)
    big.save(ROOT / "packaging" / "glassbox.ico", sizes=[(16, 16), (32, 32), (48, 48), (256, 256)])


if __name__ == "__main__":
    main()
