"""The user's settings: one JSON file, ``settings.json``, for every choice napari-medgen remembers.

The file lives in ``$MEDGEN_CONFIG_DIR`` (default ``~/.config/napari-medgen``). A value that
cannot be saved (a read-only home) still holds for this session. No Qt and no napari here,
so the CLI can import it.

Keys in use: ``display_convention`` (:mod:`napari_medgen.display`) and ``show_examples``
(whether the docks list example families, such as the template plugin's; the environment
variable ``MEDGEN_SHOW_EXAMPLES=1`` turns it on for one process).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .errors import MedGenError

__all__ = [
    "SHOW_EXAMPLES_ENV",
    "config_path",
    "get",
    "read_all",
    "set_value",
    "set_show_examples",
    "show_examples",
]

log = logging.getLogger("napari_medgen.settings")

#: environment variable that lists example families in the docks for one process ("1", "true", "yes", "on")
SHOW_EXAMPLES_ENV = "MEDGEN_SHOW_EXAMPLES"
_SHOW_EXAMPLES = "show_examples"
_TRUE = ("1", "true", "yes", "on")

#: values that could not be saved (read-only config dir): they hold for this session
_unsaved: dict[str, Any] = {}


def config_path() -> Path:
    """The settings file: ``$MEDGEN_CONFIG_DIR/settings.json``, else ``~/.config/napari-medgen/``."""
    base = os.environ.get("MEDGEN_CONFIG_DIR")
    folder = Path(base) if base else Path.home() / ".config" / "napari-medgen"
    return folder / "settings.json"


def read_all() -> dict[str, Any]:
    """Every saved setting (an empty dict when the file is missing or unreadable)."""
    try:
        data = json.loads(config_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def get(key: str, default: Any = None) -> Any:
    """A setting: this session's unsaved value if any, else the saved one, else ``default``."""
    if key in _unsaved:
        return _unsaved[key]
    return read_all().get(key, default)


def set_value(key: str, value: Any) -> bool:
    """Save a setting for later sessions; returns False when it holds for this session only."""
    path = config_path()
    values = read_all()
    values[key] = value
    _unsaved.pop(key, None)
    try:
        from .io.output import write_json  # the one output path: atomic, never half a file

        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, values, overwrite=True, role="settings")
    except (OSError, MedGenError) as exc:  # a read-only home must not stop the viewer
        log.warning("could not save the setting %r to %s: %s", key, path, exc)
        _unsaved[key] = value
        return False
    return True


def show_examples() -> bool:
    """Whether the docks list example families: ``MEDGEN_SHOW_EXAMPLES=1``, else the saved setting (off)."""
    if os.environ.get(SHOW_EXAMPLES_ENV, "").strip().lower() in _TRUE:
        return True
    return get(_SHOW_EXAMPLES, False) is True


def set_show_examples(value: bool) -> None:
    """Save whether the docks list example families (the docks re-read it when the registry reloads)."""
    set_value(_SHOW_EXAMPLES, bool(value))
