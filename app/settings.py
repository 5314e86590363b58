"""Where the window remembers its layout and choices between launches."""
from __future__ import annotations

import os

from PySide6 import QtCore

__all__ = ["app_settings"]


def app_settings() -> QtCore.QSettings:
    """The app's settings; GLASSBOX_SETTINGS_DIR (used by tests) puts them in an .ini file there."""
    folder = os.environ.get("GLASSBOX_SETTINGS_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)
        return QtCore.QSettings(os.path.join(folder, "glassbox.ini"), QtCore.QSettings.Format.IniFormat)
    return QtCore.QSettings("Glassbox", "Glassbox")
