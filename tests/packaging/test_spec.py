"""The packaging files, checked without building (fast), and the built bundle when there is one."""
from __future__ import annotations

import configparser
import os
import struct
import subprocess
import sys
import types
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
SPEC = PACKAGING / "glassbox.spec"
BUNDLE_EXE = ROOT / "dist" / "glassbox" / ("glassbox.exe" if sys.platform == "win32" else "glassbox")


class _Recorder:
    """Stands in for PyInstaller's Analysis/PYZ/EXE/COLLECT/BUNDLE and remembers its arguments."""

    calls: dict[str, tuple] = {}

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        self.binaries, self.datas, self.pure, self.scripts = [], [], [], []
        _Recorder.calls[type(self).__name__] = (args, kwargs)


@pytest.fixture(scope="module")
def spec():
    """Run the spec with PyInstaller's names stubbed: returns its namespace."""
    hooks = types.ModuleType("PyInstaller.utils.hooks")
    hooks.collect_submodules = lambda package: [package]
    saved = {name: sys.modules.get(name) for name in ("PyInstaller", "PyInstaller.utils", "PyInstaller.utils.hooks")}
    sys.modules.update({"PyInstaller": types.ModuleType("PyInstaller"),
                        "PyInstaller.utils": types.ModuleType("PyInstaller.utils"),
                        "PyInstaller.utils.hooks": hooks})
    namespace = {"SPECPATH": str(PACKAGING), "__file__": str(SPEC)}
    for name in ("Analysis", "PYZ", "EXE", "COLLECT", "BUNDLE"):
        namespace[name] = type(name, (_Recorder,), {})
    try:
        exec(compile(SPEC.read_text(encoding="utf-8"), str(SPEC), "exec"), namespace)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return namespace


def test_spec_builds_paths_from_specpath_only(spec):
    text = SPEC.read_text(encoding="utf-8")
    assert "/work" not in text and "/home" not in text
    args, kwargs = _Recorder.calls["Analysis"]
    assert args[0] == [str(PACKAGING / "launcher.py")]
    assert kwargs["pathex"] == [str(ROOT)]
    assert (PACKAGING / "launcher.py").exists()
    assert _Recorder.calls["EXE"][1]["name"] == "glassbox"
    assert _Recorder.calls["COLLECT"][1]["name"] == "glassbox"


def test_spec_picks_an_icon_per_os(spec):
    text = SPEC.read_text(encoding="utf-8")
    assert "glassbox.ico" in text and "glassbox.icns" in text
    assert (PACKAGING / "glassbox.ico").exists()


def test_spec_excludes_the_dead_weight(spec):
    excludes = set(_Recorder.calls["Analysis"][1]["excludes"])
    assert {"pytest", "_pytest", "jinja2", "PyQt5", "PyQt6", "PySide2"} <= excludes
    assert not {"torch", "sympy", "torch._dynamo", "torch._inductor", "PySide6.QtSvg",
                "PySide6.QtOpenGL", "PySide6.QtTest", "pyqtgraph.util.cupy_helper"} & excludes  # imported at run time


@pytest.mark.parametrize("dest", [
    "torch/lib/libtorch_cpu.so", "torch/lib/libc10.so", "torch\\lib\\torch_cpu.dll",
    "PySide6/Qt/plugins/platforms/libqoffscreen.so", "PySide6/Qt/plugins/platforms/libqxcb.so",
    "PySide6/plugins/platforms/qwindows.dll", "PySide6/Qt/plugins/imageformats/libqpng.so",
    "PySide6/Qt/plugins/imageformats/libqsvg.so", "PySide6/Qt/lib/libQt6Svg.so.6",
    "PySide6/Qt/plugins/platforms/libqwayland-egl.so", "PySide6/Qt/plugins/platformthemes/libqxdgdesktopportal.so",
    "libglib-2.0.so.0", "libfontconfig.so.1", "torch/bin/torch_shm_manager",
    "assets/glassbox.svg", "assets/glassbox.png",
])
def test_spec_keeps(spec, dest):
    assert spec["_keep"](dest)


@pytest.mark.parametrize("dest", [
    "torch/include/ATen/ATen.h", "torch/test/atest", "torch/bin/protoc", "torch/share/cmake/Torch/x.txt",
    "torch/lib/libjitbackend_test.so", "torch\\lib\\torchbind_test.dll",
    "PySide6/Qt/translations/qtbase_de.qm", "PySide6/Qt/plugins/imageformats/libqtiff.so",
    "PySide6/Qt/plugins/sqldrivers/libqsqlite.so", "PySide6/Qt/lib/libQt6Quick.so.6",
    "PySide6/Qt/lib/libQt6Network.so.6", "torch/__init__.pyi",
    "PySide6/Qt/plugins/platformthemes/libqgtk3.so", "libcairo.so.2",
    "PySide6/Qt/lib/libQt6EglFSDeviceIntegration.so.6",
])
def test_spec_drops(spec, dest):
    assert not spec["_keep"](dest)


def test_desktop_entry_has_the_required_keys():
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str
    entry.read(PACKAGING / "glassbox.desktop", encoding="utf-8")
    section = entry["Desktop Entry"]
    for key in ("Type", "Name", "Comment", "Exec", "Icon", "Categories", "Terminal"):
        assert section.get(key), key
    assert section["Type"] == "Application"
    assert section["Exec"].split()[0] == "glassbox"
    assert section["Icon"] == "glassbox"
    assert section["Categories"].endswith(";")


def test_icon_png_is_256_square_and_small():
    png = ROOT / "assets" / "glassbox.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (256, 256)
    assert len(data) < 32_000


def test_icon_svg_parses():
    root = ElementTree.parse(ROOT / "assets" / "glassbox.svg").getroot()
    assert root.tag.endswith("svg")
    assert root.get("viewBox") == "0 0 256 256"


def test_makefile_package_targets_install_the_extra():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert 'pip install -q -e ".[package]"' in makefile
    assert "package-test: package" in makefile
    assert "packaging/bundle_test.sh" in makefile


@pytest.mark.skipif(not BUNDLE_EXE.exists(), reason="no built bundle (make package)")
def test_built_bundle_passes_its_smoke_test(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", GLASSBOX_SETTINGS_DIR=str(tmp_path))
    result = subprocess.run([str(BUNDLE_EXE), "--smoke-test", "100"], env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"errors": []' in result.stdout.strip().splitlines()[-1]
