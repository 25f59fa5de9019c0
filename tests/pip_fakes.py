"""Fake pip for the installer tests: wheels written by hand and a runner that answers like pip."""

from __future__ import annotations

import json
import threading
import zipfile
from pathlib import Path
from typing import Callable, Sequence

from napari_medgen.installer import PipResult


def make_wheel(folder: Path, name: str, version: str = "1.0.0", entry_points: dict[str, str] | None = None,
               requires: Sequence[str] = (), tag: str = "py3-none-any") -> Path:
    """A minimal wheel: one module, METADATA, and entry points in the group ``napari_medgen``."""
    folder.mkdir(parents=True, exist_ok=True)
    mod = name.replace("-", "_")
    path = folder / f"{mod}-{version}-{tag}.whl"
    info = f"{mod}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{mod}/__init__.py", "")
        zf.writestr(f"{info}/METADATA", meta)
        zf.writestr(f"{info}/WHEEL", f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n")
        if entry_points:
            zf.writestr(f"{info}/entry_points.txt", "[napari_medgen]\n" + "".join(
                f"{k} = {v}\n" for k, v in entry_points.items()))
        zf.writestr(f"{info}/RECORD", "")
    return path


def _after(args: Sequence[str], flag: str) -> str:
    return args[list(args).index(flag) + 1]


class FakePip:
    """Answers ``pip wheel``, ``pip install --dry-run --report`` and ``pip install/uninstall``.

    ``wheel`` is the wheel ``pip wheel`` produces; ``report`` the dry run's ``install`` list
    (default: the wheel's own distribution); ``fail`` maps a step (wheel, dry-run, install,
    uninstall) to pip's output for a failure. ``on_install`` runs when the real install step
    does; ``block`` makes every step wait until it is set or cancelled.
    """

    def __init__(self, wheel: Path | None = None, report: list[tuple[str, str]] | None = None,
                 fail: dict[str, str] | None = None, on_install: Callable[[], None] | None = None,
                 block: threading.Event | None = None) -> None:
        self.wheel, self.report, self.fail = wheel, report, fail or {}
        self.on_install, self.block = on_install, block
        self.calls: list[list[str]] = []
        self.cancelled = threading.Event()

    def __call__(self, args: Sequence[str], log: Callable[[str], None]) -> PipResult:
        from napari_medgen.errors import Cancelled

        args = list(args)
        self.calls.append(args)
        log("$ pip " + " ".join(args))
        if self.block is not None:
            while not self.block.wait(0.02):
                if self.cancelled.is_set():
                    raise Cancelled("cancelled; nothing was changed")
        step = args[0] if args[0] != "install" or "--dry-run" not in args else "dry-run"
        if step in self.fail:
            log(self.fail[step])
            return PipResult(1, self.fail[step])
        if step == "wheel":
            out = Path(_after(args, "--wheel-dir"))
            out.mkdir(parents=True, exist_ok=True)
            (out / self.wheel.name).write_bytes(self.wheel.read_bytes())
        elif step == "dry-run":
            items = self.report
            if items is None:
                name, version = self.wheel.name.split("-")[:2]
                items = [(name.replace("_", "-"), version)]
            report = {"version": "1", "install": [{"metadata": {"name": n, "version": v}} for n, v in items]}
            Path(_after(args, "--report")).write_text(json.dumps(report))
            log("Would install " + " ".join(f"{n}-{v}" for n, v in items))
        elif step in ("install", "uninstall") and self.on_install is not None:
            self.on_install()
        return PipResult(0, "ok")

    def cancel(self) -> None:
        self.cancelled.set()

    def steps(self) -> list[str]:
        return [a[0] if a[0] != "install" or "--dry-run" not in a else "dry-run" for a in self.calls]
