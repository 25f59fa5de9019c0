"""Install, upgrade and remove community model-family packages in the running environment.

The Model families panel and ``medgen plugins`` share this module (no Qt, no napari). It
drives pip in the running interpreter (``sys.executable -m pip``) and protects the
environment napari runs in:

1. The package is fetched or built once, without its dependencies
   (``pip wheel --no-deps``), from an index, a local wheel, sdist or project folder, or a
   folder of wheels (``--no-index --find-links`` for hospitals without internet). Its wheel is
   read *before anything is installed*: a package with no entry point in the group
   ``napari_medgen`` provides no model family and is refused; a wheel built for another
   Python or platform is refused with the tags it needs.
2. A constraints file written at run time pins napari, napari-medgen, torch, numpy, qtpy and
   the Qt binding (:data:`PROTECTED`) to the installed versions, so installing a family can
   never replace them: a resolution that would is refused with pip's own reason.
3. A dry run (``pip install --dry-run --report``) of exactly that wheel lists every
   distribution that would be installed or changed, with versions: the :class:`Plan` the
   user confirms. Nothing is installed before :func:`apply` is called with the plan.
4. After a change, :func:`after_change` invalidates the import caches and says whether a
   restart is needed (an upgraded module that is already imported keeps its old code); the
   caller reloads the registry.

Every pip call goes through a *runner* (:class:`PipRunner` by default; tests pass a fake),
which streams pip's output line by line to a log callback and can be cancelled.
"""

from __future__ import annotations

import importlib
import importlib.metadata as im
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import zipfile
from configparser import ConfigParser
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from .errors import EXIT_FAILED, EXIT_USAGE, Cancelled, MedGenError
from .io.output import write_bytes
from .registry import BUILTIN_PACKAGE, ENTRY_POINT_GROUP, FIRST_PARTY

__all__ = [
    "PROTECTED",
    "InstallError",
    "Source",
    "Change",
    "Plan",
    "PipResult",
    "PipRunner",
    "FamilyPackage",
    "constraints",
    "family_packages",
    "prepare_install",
    "prepare_upgrade",
    "prepare_uninstall",
    "apply",
    "after_change",
    "normalize",
    "TRUST_NOTE",
]

#: distributions a family package may never replace (the Qt bindings only where installed)
PROTECTED = (
    "napari", BUILTIN_PACKAGE, "torch", "numpy", "qtpy",
    "PyQt5", "PyQt5-Qt5", "PyQt5-sip", "PyQt6", "PyQt6-Qt6", "PyQt6-sip",
    "PySide2", "PySide6", "PySide6-Essentials", "shiboken2", "shiboken6",
)
#: the project's own distributions: never removed or replaced from here
PROJECT_PACKAGES = (BUILTIN_PACKAGE, *FIRST_PARTY)

TRUST_NOTE = (
    "A model family runs code on this computer with your permissions, and reads the scans you give it: "
    "install only packages from sources you trust."
)

Log = Callable[[str], None]


class InstallError(MedGenError):
    """A package cannot be installed, upgraded or removed; the environment was not changed."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


def normalize(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower().strip()


# -- running pip -----------------------------------------------------------------------------
@dataclass
class PipResult:
    returncode: int
    output: str


class Runner(Protocol):  # pragma: no cover - a type
    def __call__(self, args: Sequence[str], log: Log) -> PipResult: ...


class PipRunner:
    """Runs ``sys.executable -m pip ARGS`` and streams its output; :meth:`cancel` stops it."""

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.cancelled = threading.Event()

    def __call__(self, args: Sequence[str], log: Log) -> PipResult:
        if self.cancelled.is_set():
            raise Cancelled("cancelled; nothing was changed")
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONUNBUFFERED="1", PIP_NO_INPUT="1")
        cmd = [self.python, "-m", "pip", *args]
        log("$ " + " ".join(["python", "-m", "pip", *args]))
        with self._lock:
            self._proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                text=True, errors="replace", env=env,
            )
        lines: list[str] = []
        satisfied = 0
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if line.startswith("Requirement already satisfied"):
                satisfied += 1  # one line per installed dependency: counted, not shown
            else:
                log(line)
        if satisfied:
            log(f"({satisfied} requirements already satisfied by this environment)")
        code = self._proc.wait()
        with self._lock:
            self._proc = None
        if self.cancelled.is_set():
            raise Cancelled("cancelled; nothing was changed")
        return PipResult(code, "\n".join(lines))

    def cancel(self) -> None:
        """Stop the running pip (it is terminated; a dry run or a download leaves nothing behind)."""
        self.cancelled.set()
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()


def _check_pip(python: str | None = None) -> None:
    if (python or sys.executable) == sys.executable and importlib.util.find_spec("pip") is None:
        raise InstallError(
            f"pip is not available in this Python ({sys.executable}); add it with "
            f"'{sys.executable} -m ensurepip' or install the package from a terminal"
        )


def _check_writable() -> None:
    """The environment's package folders must be writable, or pip would fail halfway."""
    paths = sysconfig.get_paths()
    for key in ("purelib", "platlib", "scripts"):
        folder = Path(paths[key])
        probe = folder if folder.exists() else folder.parent
        if not os.access(probe, os.W_OK):
            raise InstallError(
                f"no write permission to {folder} (the Python environment napari runs from, {sys.prefix}); "
                "ask your administrator, or run napari from a virtual environment you own"
            )


def _pip_reason(output: str) -> str:
    """pip's own explanation of a failure, in a few lines (the conflict, or its ERROR lines)."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("The conflict is caused by:"):
            block = []
            for more in lines[i + 1:]:
                if not more.strip():
                    break
                block.append(more.strip())
            return "; ".join(block)
    errors = [ln.strip()[len("ERROR:"):].strip() for ln in lines if ln.strip().startswith("ERROR:")]
    errors = [e for e in errors if not e.startswith("ResolutionImpossible")]
    if errors:
        return " ".join(errors[:3])
    for line in reversed(lines):
        if line.strip() and not line.startswith("$ "):
            return line.strip()
    return "pip failed without a message"


# -- what is installed ---------------------------------------------------------------------
def _installed() -> dict[str, im.Distribution]:
    out: dict[str, im.Distribution] = {}
    for dist in im.distributions():
        name = dist.metadata["Name"]
        if name and normalize(name) not in out:
            out[normalize(name)] = dist
    return out


def constraints() -> str:
    """The constraints file's text: each installed :data:`PROTECTED` distribution pinned."""
    installed = _installed()
    lines = ["# written by napari-medgen: a family package may not replace these"]
    for name in PROTECTED:
        dist = installed.get(normalize(name))
        if dist is not None:
            lines.append(f"{dist.metadata['Name']}=={dist.version}")
    return "\n".join(lines) + "\n"


@dataclass
class FamilyPackage:
    """An installed distribution with entry points in the group ``napari_medgen``."""

    name: str
    version: str
    entry_points: list[str]
    location: str
    removable: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def family_packages() -> list[FamilyPackage]:
    """Installed distributions that provide model families (built-in and first-party included)."""
    importlib.invalidate_caches()
    out: dict[str, FamilyPackage] = {}
    for dist in im.distributions():
        eps = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
        name = dist.metadata["Name"] or ""
        if not eps or not name or normalize(name) in out:
            continue
        where = ""
        try:
            where = str(dist.locate_file(""))
        except Exception:  # pragma: no cover - odd distributions
            pass
        out[normalize(name)] = FamilyPackage(
            name, dist.version, [f"{ep.name} = {ep.value}" for ep in eps], where,
            removable=normalize(name) not in {normalize(p) for p in PROJECT_PACKAGES},
        )
    return sorted(out.values(), key=lambda p: normalize(p.name))


# -- reading a wheel before it is installed --------------------------------------------------
@dataclass
class WheelInfo:
    path: Path
    name: str
    version: str
    entry_points: list[str]
    requires: list[str]


def _read_wheel(path: Path) -> WheelInfo:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            info_dir = next((n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")), None)
            if info_dir is None:
                raise InstallError(f"{path.name} is not a wheel (no .dist-info folder)")
            meta = zf.read(f"{info_dir}/METADATA").decode("utf-8", "replace")
            eps_text = zf.read(f"{info_dir}/entry_points.txt").decode("utf-8", "replace") \
                if f"{info_dir}/entry_points.txt" in names else ""
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise InstallError(f"{path.name} cannot be read as a wheel: {exc}") from None
    from email.parser import Parser

    msg = Parser().parsestr(meta)
    parser = ConfigParser(interpolation=None, delimiters=("=",))
    parser.optionxform = str  # entry-point names keep their case
    try:
        parser.read_string(eps_text)
    except Exception as exc:
        raise InstallError(f"{path.name}: its entry_points.txt cannot be read ({exc})") from None
    eps = [f"{k} = {v}" for k, v in parser.items(ENTRY_POINT_GROUP)] if parser.has_section(ENTRY_POINT_GROUP) else []
    return WheelInfo(path, msg.get("Name", ""), msg.get("Version", ""), eps, msg.get_all("Requires-Dist") or [])


def _check_wheel_tags(path: Path) -> None:
    """Refuse a wheel built for another Python or platform, naming what it was built for."""
    from packaging.tags import sys_tags
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    try:
        _, _, _, tags = parse_wheel_filename(path.name)
    except InvalidWheelFilename:
        raise InstallError(f"{path.name} is not a valid wheel file name") from None
    supported = set(sys_tags())
    if not tags & supported:
        built = ", ".join(sorted(str(t) for t in tags)[:3])
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise InstallError(
            f"{path.name} is built for {built}; this napari runs Python {py} on {sysconfig.get_platform()}: "
            f"get the wheel for cp{py.replace('.', '')} on this platform, or the package's sdist"
        )


# -- plans -------------------------------------------------------------------------------------
@dataclass
class Source:
    """Where a package comes from: a name on an index, a file or folder, and an optional wheel folder."""

    spec: str
    version: str = ""
    find_links: str = ""
    offline: bool = False  # --no-index: only the wheel folder (and local files)

    def kind(self) -> str:
        if not self.spec.strip():
            return "name"
        p = Path(self.spec).expanduser()
        if self.spec.endswith((".whl",)):
            return "wheel"
        if self.spec.endswith((".tar.gz", ".zip", ".tar.bz2")) or (p.exists() and p.is_file()):
            return "sdist"
        if p.is_dir() or self.spec.startswith((".", "/", "~")) or os.sep in self.spec:
            return "folder"
        return "name"

    def requirement(self) -> str:
        if not self.spec.strip():
            raise InstallError(
                "nothing given to install: type a package name, or give a wheel, an sdist or a project folder"
            )
        kind = self.kind()
        if kind != "name":
            p = Path(self.spec).expanduser()
            if not p.exists():
                raise InstallError(f"{self.spec} does not exist")
            if kind == "folder" and not any((p / f).exists() for f in ("pyproject.toml", "setup.py", "setup.cfg")):
                raise InstallError(f"{self.spec} is a folder without pyproject.toml or setup.py: not a Python project")
            if self.version:
                raise InstallError("a version is only for a package name; a file or folder has its own")
            return str(p.resolve())
        name = self.spec.strip()
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\s*(==|>=|<=|~=|!=|>|<)\s*[A-Za-z0-9.*+!_-]+)?$", name):
            raise InstallError(
                f"{name!r} is not a package name (or name==version), a wheel, an sdist or a project folder"
            )
        if self.version:
            if re.search(r"[=<>~!]", name):
                raise InstallError("give the version either in the name (name==1.2) or as the version, not both")
            return f"{name}=={self.version.strip()}"
        return name

    def index_args(self) -> list[str]:
        args: list[str] = []
        if self.find_links:
            folder = Path(self.find_links).expanduser()
            if not folder.is_dir():
                raise InstallError(f"wheel folder {self.find_links} does not exist")
            args += ["--find-links", str(folder.resolve())]
        if self.offline:
            args.append("--no-index")
        return args

    def describe(self) -> str:
        where = f" from the wheel folder {self.find_links}" if self.find_links else ""
        if self.offline:
            where += " (offline)"
        return f"{self.requirement()}{where}"


@dataclass
class Change:
    """One distribution a plan installs, replaces or removes."""

    name: str
    version: str
    installed: str = ""  # the version there now ("" = not installed)
    action: str = "install"  # install | upgrade | downgrade | reinstall | remove

    def line(self) -> str:
        if self.action == "install":
            return f"install {self.name} {self.version}"
        if self.action == "remove":
            return f"remove {self.name} {self.installed}"
        return f"{self.action} {self.name} {self.installed} -> {self.version}"


@dataclass
class Plan:
    """What a confirmed install, upgrade or uninstall will do: shown to the user first."""

    action: str  # install | upgrade | uninstall
    package: str
    version: str
    changes: list[Change]
    entry_points: list[str]
    pip_args: list[str]
    source: str = ""
    workdir: str = ""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        verb = {"install": "Install", "upgrade": "Upgrade", "uninstall": "Remove"}[self.action]
        lines = [f"{verb} {self.package} {self.version}" + (f" from {self.source}" if self.source else "")]
        lines.append(f"model-family entry points: {', '.join(self.entry_points) or 'none'}")
        lines.append("changes to this Python environment:")
        lines += [f"  {c.line()}" for c in self.changes] or ["  none"]
        lines += self.notes
        if self.action != "uninstall":
            lines.append(TRUST_NOTE)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action, "package": self.package, "version": self.version, "source": self.source,
            "entry_points": self.entry_points, "changes": [c.__dict__ for c in self.changes], "notes": self.notes,
        }

    def cleanup(self) -> None:
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _fetch_wheel(source: Source, workdir: Path, runner: Runner, log: Log) -> WheelInfo:
    """The requested package as one wheel, without dependencies (downloaded or built here)."""
    req = source.requirement()
    if source.kind() == "wheel":
        _check_wheel_tags(Path(req))
    out = workdir / "wheel"
    result = runner(["wheel", "--no-deps", "--wheel-dir", str(out), *source.index_args(), req], log)
    if result.returncode != 0:
        reason = _pip_reason(result.output)
        if "No matching distribution" in reason or "Could not find a version" in reason:
            where = f"in the wheel folder {source.find_links}" if source.offline else \
                "on the package index" + (f" or in {source.find_links}" if source.find_links else "")
            raise InstallError(f"no package {req} {where}: {reason}")
        if "is not a supported wheel" in reason:
            raise InstallError(reason)
        raise InstallError(f"{req} could not be fetched or built: {reason}")
    wheels = sorted(out.glob("*.whl")) if out.exists() else []
    if len(wheels) != 1:
        raise InstallError(f"{req}: pip produced {len(wheels)} wheels, expected one")
    _check_wheel_tags(wheels[0])
    info = _read_wheel(wheels[0])
    if normalize(info.name) in {normalize(p) for p in (*PROTECTED, *PROJECT_PACKAGES)}:
        raise InstallError(
            f"{info.name} is part of the environment napari-medgen runs in and is not installed or upgraded from "
            "here (use pip from a terminal, then restart napari)"
        )
    if not info.entry_points:
        raise InstallError(
            f"{info.name} {info.version} provides no napari-medgen model family (its metadata has no entry point in "
            f"the group '{ENTRY_POINT_GROUP}'); it was not installed"
        )
    return info


def _dry_run(wheel: WheelInfo, source: Source, workdir: Path, runner: Runner, log: Log,
             extra: Sequence[str] = ()) -> tuple[list[Change], list[str]]:
    cfile = write_bytes(workdir / "constraints.txt", constraints().encode("utf-8"), overwrite=True,
                        role="constraints file")
    report = workdir / "report.json"
    args = ["install", "--constraint", str(cfile), *source.index_args(), *extra, str(wheel.path)]
    result = runner([*args[:1], "--dry-run", "--report", str(report), *args[1:]], log)
    if result.returncode != 0:
        reason = _pip_reason(result.output)
        pinned = sorted(set(re.findall(r"\(constraint\)\s+([A-Za-z0-9._-]+?)==", reason)))
        if "(constraint)" in reason:
            what = ", ".join(pinned) or "a protected package"
            raise InstallError(
                f"{wheel.name} {wheel.version} would need another version of {what}, which napari-medgen keeps as "
                f"installed (napari, napari-medgen, torch, numpy, qtpy and the Qt binding are pinned): {reason}"
            )
        raise InstallError(f"{wheel.name} {wheel.version} cannot be installed here: {reason}")
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InstallError(f"pip's dry-run report could not be read: {exc}") from None
    changes = _changes(data)
    protected = {normalize(p) for p in PROTECTED}
    bad = [c for c in changes if normalize(c.name) in protected]
    if bad:  # the constraints should have stopped this already: never go on
        raise InstallError(
            f"{wheel.name} would change {', '.join(c.line() for c in bad)}; napari-medgen keeps these as installed"
        )
    return changes, args


def _changes(report: dict[str, Any]) -> list[Change]:
    from packaging.version import InvalidVersion, Version

    installed = _installed()
    out = []
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        name, version = meta.get("name", "?"), meta.get("version", "?")
        dist = installed.get(normalize(name))
        action = "install"
        if dist is not None:
            try:
                new, old = Version(version), Version(dist.version)
                action = "upgrade" if new > old else "downgrade" if new < old else "reinstall"
            except InvalidVersion:
                action = "reinstall"
        out.append(Change(name, version, dist.version if dist is not None else "", action))
    return out


def _new_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="medgen-plugins-"))


def prepare_install(source: Source, *, runner: Runner | None = None, log: Log = lambda s: None,
                    upgrade: bool = False) -> Plan:
    """Fetch and read the package, dry-run its installation: the plan to confirm (nothing installed)."""
    runner = runner or PipRunner()
    _check_pip()
    _check_writable()
    source.requirement()  # a bad source is refused before pip runs
    source.index_args()
    workdir = _new_workdir()
    try:
        log(f"Reading {source.describe()} ...")
        wheel = _fetch_wheel(source, workdir, runner, log)
        current = _installed().get(normalize(wheel.name))
        if current is not None and current.version == wheel.version:
            raise InstallError(
                f"{wheel.name} {wheel.version} is already installed" + (" (the newest available)" if upgrade else "")
            )
        if upgrade and current is None:
            raise InstallError(f"{wheel.name} is not installed; install it instead of upgrading")
        log(f"{wheel.name} {wheel.version} provides: {', '.join(wheel.entry_points)}")
        log("Checking what would change (dry run, with napari, torch, numpy and Qt pinned) ...")
        changes, args = _dry_run(wheel, source, workdir, runner, log)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    notes = []
    loaded = _loaded_modules(wheel.name, wheel.path)
    if loaded:
        notes.append(f"{', '.join(loaded)} is already loaded: restart napari after this to use the new version.")
    return Plan("upgrade" if upgrade else "install", wheel.name, wheel.version, changes, wheel.entry_points,
                args, source=source.describe(), workdir=str(workdir), notes=notes)


def prepare_upgrade(name: str, *, find_links: str = "", offline: bool = False, runner: Runner | None = None,
                    log: Log = lambda s: None) -> Plan:
    """Upgrade an installed family package to the newest version the index or wheel folder has."""
    pkg = _family_package(name)
    return prepare_install(Source(pkg.name, find_links=find_links, offline=offline), runner=runner, log=log,
                           upgrade=True)


def _family_package(name: str) -> FamilyPackage:
    wanted = normalize(name)
    if wanted in {normalize(p) for p in PROJECT_PACKAGES}:
        raise InstallError(
            f"{name} is part of napari-medgen itself; its families cannot be upgraded or removed from here"
        )
    for pkg in family_packages():
        if normalize(pkg.name) == wanted:
            return pkg
    if wanted in _installed():
        raise InstallError(f"{name} is installed but provides no model family; use pip to manage it")
    raise InstallError(f"{name} is not installed (see `medgen plugins list`)")


def prepare_uninstall(name: str) -> Plan:
    """The plan to remove a family package (never napari-medgen or its own plugins)."""
    _check_pip()
    pkg = _family_package(name)
    _check_writable()
    notes = []
    needed_by = _required_by(pkg.name)
    if needed_by:
        notes.append(f"note: {', '.join(needed_by)} require(s) {pkg.name} and may stop working.")
    return Plan("uninstall", pkg.name, pkg.version, [Change(pkg.name, "", pkg.version, "remove")],
                pkg.entry_points, ["uninstall", "--yes", pkg.name], notes=notes)


def _required_by(name: str) -> list[str]:
    from packaging.requirements import InvalidRequirement, Requirement

    out = []
    for dist in im.distributions():
        for req in dist.requires or []:
            try:
                if normalize(Requirement(req).name) == normalize(name):
                    out.append(dist.metadata["Name"])
                    break
            except InvalidRequirement:
                continue
    return sorted(set(out))


def apply(plan: Plan, *, runner: Runner | None = None, log: Log = lambda s: None) -> dict[str, Any]:
    """Carry out a confirmed plan; returns :func:`after_change`'s report. The plan's files are removed after."""
    runner = runner or PipRunner()
    try:
        if plan.action == "uninstall":
            log(f"Removing {plan.package} {plan.version} ...")
        else:
            log(f"Installing {plan.package} {plan.version} ...")
        result = runner(plan.pip_args, log)
        if result.returncode != 0:
            reason = _pip_reason(result.output)
            if "Permission denied" in result.output or "EACCES" in result.output:
                reason = f"no write permission to the environment ({sys.prefix}): {reason}"
            raise InstallError(f"pip could not {plan.action} {plan.package}: {reason}", exit_code=EXIT_FAILED)
    finally:
        plan.cleanup()
    return after_change(plan)


def _top_level(dist_name: str, wheel: Path | None = None) -> set[str]:
    """The importable top-level names a distribution provides (from the wheel or the installed files)."""
    names: set[str] = set()
    files: list[str] = []
    if wheel is not None and wheel.exists():
        try:
            with zipfile.ZipFile(wheel) as zf:
                files = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            files = []
    else:
        try:
            files = [str(f) for f in (im.distribution(dist_name).files or [])]
        except im.PackageNotFoundError:
            files = []
    for f in files:
        first = f.split("/")[0]
        if first.endswith((".dist-info", ".data")) or first.startswith("__"):
            continue
        if f.endswith(".py") or "/" in f:
            names.add(first[:-3] if first.endswith(".py") else first)
    return names


def _loaded_modules(dist_name: str, wheel: Path | None = None) -> list[str]:
    return sorted(n for n in _top_level(dist_name, wheel) if n in sys.modules)


def after_change(plan: Plan) -> dict[str, Any]:
    """Make the change visible to this process; whether napari must restart to use it."""
    importlib.invalidate_caches()
    restart = [n for n in plan.notes if "restart" in n]
    if plan.action != "uninstall":
        loaded = _loaded_modules(plan.package)
        changed = [c for c in plan.changes if c.action != "install" and normalize(c.name) != normalize(plan.package)]
        for c in changed:
            loaded += _loaded_modules(c.name)
        if loaded and not restart:
            restart.append(f"{', '.join(sorted(set(loaded)))} was already loaded: restart napari to use the new code.")
    return {"plan": plan.to_dict(), "restart_needed": bool(restart), "messages": restart}
