"""The plugin manager: discovers model families, validates them and isolates failures.

This is the only module that touches entry points. Each entry point of the group
``napari_medgen`` is loaded on its own (pluggy's ``load_setuptools_entrypoints`` stops at the
first failure, so it is not used); a plugin that fails to import, fails pluggy's checks,
raises in its hook or registers a malformed or duplicate family is recorded in
:attr:`Registry.errors` and the others load normally.

Environment variables:

* ``MEDGEN_PLUGINS``: comma-separated entry-point or distribution names; when set, only
  these plugins load (the built-in ``builtin`` entry point always loads).
* ``MEDGEN_DISABLE_PLUGINS``: comma-separated names that never load (``builtin`` included).

Family ids: the built-in plugin loads first, then the project's own distributions
(:data:`FIRST_PARTY`), then every other plugin in entry-point name order. A family whose id is
already registered is refused (an error naming both packages), so installing a package can
never change what an existing id runs; ids in the ``medgen.`` namespace belong to the built-in
package alone.
"""

from __future__ import annotations

import importlib.metadata as im
import logging
import os
import re
import threading
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import pluggy

from .errors import PluginError
from .family import InputSpec, ModelFamily, Param, Task
from .hookspecs import PROJECT_NAME, MedGenHookSpecs

__all__ = [
    "FamilyEntry",
    "LoadError",
    "Registry",
    "validate_family",
    "get_registry",
    "set_registry",
    "ENTRY_POINT_GROUP",
]

ENTRY_POINT_GROUP = "napari_medgen"
BUILTIN_PLUGIN = "builtin"
#: the distribution whose ``builtin`` entry point holds the built-in families
BUILTIN_PACKAGE = "napari-medgen"
#: the project's own distributions: they load right after the built-in families
FIRST_PARTY = ("medgen-classic", "medgen-template")
#: family ids with this prefix may only come from the built-in package
RESERVED_PREFIX = "medgen."
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")

log = logging.getLogger("napari_medgen.registry")


@dataclass
class FamilyEntry:
    """A registered family and where it came from."""

    family: ModelFamily
    plugin: str
    package: str
    package_version: str = ""
    status: str = "ok"

    @property
    def id(self) -> str:
        return self.family.id

    @property
    def task(self) -> Task:
        return Task(self.family.task)

    def to_dict(self) -> dict[str, Any]:
        d = self.family.describe()
        d.update(
            {
                "plugin": self.plugin,
                "package": self.package,
                "package_version": self.package_version,
                "status": self.status,
            }
        )
        return d


@dataclass
class LoadError:
    """A plugin (or one of its families) that could not be loaded, and why."""

    plugin: str
    package: str
    stage: str  # import | hooks | register | family | clash
    message: str
    details: str = ""
    family_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "plugin": self.plugin,
            "package": self.package,
            "stage": self.stage,
            "status": "error",
            "error": self.message,
        }


def validate_family(family: Any) -> list[str]:
    """Problems that stop ``family`` from being registered (empty list: it is fine)."""
    problems: list[str] = []
    if not isinstance(family, ModelFamily):
        return [f"expected a ModelFamily instance, got {type(family).__name__}"]
    fid = getattr(family, "id", "")
    if not isinstance(fid, str) or not _ID_RE.match(fid):
        problems.append(f"invalid id {fid!r} (lower-case letters, digits, '.', '_' or '-')")
    try:
        Task(family.task)
    except ValueError:
        problems.append(f"unknown task {family.task!r} (one of {', '.join(t.value for t in Task)})")
    for attr in ("display_name", "version"):
        value = getattr(family, attr, "")
        if not isinstance(value, str) or not value.strip():
            problems.append(f"missing {attr}")
    names = []
    for p in family.params:
        if not isinstance(p, Param):
            problems.append(f"parameter {p!r} is not a Param")
            continue
        names.append(p.name)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"duplicate parameter names: {', '.join(dupes)}")
    for spec in family.inputs:
        if not isinstance(spec, InputSpec):
            problems.append(f"extra input {spec!r} is not an InputSpec")
    if type(family).run is ModelFamily.run:
        problems.append("run() is not implemented")
    return problems


def _is_builtin(name: str, package: str) -> bool:
    """The built-in plugin: the ``builtin`` entry point of napari-medgen itself."""
    return name == BUILTIN_PLUGIN and package in (BUILTIN_PACKAGE, "")


def _load_rank(name: str, package: str) -> int:
    """Load order: built-in, then the project's own distributions, then everything else."""
    if _is_builtin(name, package):
        return 0
    return 1 if package in FIRST_PARTY else 2


def _split_env(name: str) -> set[str]:
    return {s.strip() for s in os.environ.get(name, "").split(",") if s.strip()}


def _dist_of(ep: im.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "", ""
    return dist.metadata["Name"] or "", dist.version or ""


def _dist_of_object(obj: Any) -> tuple[str, str]:
    """The installed distribution that provides a plugin module/object, if any."""
    module = getattr(obj, "__name__", None) if isinstance(obj, type(os)) else getattr(obj, "__module__", None)
    if not module:
        return "", ""
    for ep in im.entry_points(group=ENTRY_POINT_GROUP):
        if ep.module == module:
            return _dist_of(ep)
    top = module.split(".")[0]
    dists = im.packages_distributions().get(top) or []
    if not dists:
        return "", ""
    try:
        return dists[0], im.version(dists[0])
    except im.PackageNotFoundError:  # pragma: no cover
        return dists[0], ""


class Registry:
    """Families by id and task, plus what failed to load.

    ``entry_points=True`` discovers installed plugins; ``plugins`` registers extra
    ``(name, module_or_object)`` pairs directly (tests and embedding applications).
    """

    def __init__(
        self,
        *,
        entry_points: bool = True,
        plugins: Iterable[tuple[str, Any]] = (),
        autoload: bool = True,
    ) -> None:
        self.use_entry_points = entry_points
        self.extra_plugins = list(plugins)
        self._entries: dict[str, FamilyEntry] = {}
        self.errors: list[LoadError] = []
        self.skipped: list[str] = []
        self.plugins: dict[str, tuple[str, str]] = {}  # plugin name -> (package, version)
        self._lock = threading.RLock()
        self._loaded = False
        if autoload:
            self.load()

    # -- loading -----------------------------------------------------------------
    def _wanted(self, name: str, package: str) -> bool:
        allow = _split_env("MEDGEN_PLUGINS")
        deny = _split_env("MEDGEN_DISABLE_PLUGINS")
        if name in deny or (package and package in deny):
            return False
        if allow and name != BUILTIN_PLUGIN and name not in allow and package not in allow:
            return False
        return True

    def load(self) -> "Registry":
        """(Re)discover every plugin and register its families."""
        with self._lock:
            self._entries = {}
            self.errors = []
            self.skipped = []
            self.plugins = {}
            pm = pluggy.PluginManager(PROJECT_NAME)
            pm.add_hookspecs(MedGenHookSpecs)
            candidates: list[tuple[str, str, str, Callable[[], Any]]] = []
            if self.use_entry_points:
                for ep in im.entry_points(group=ENTRY_POINT_GROUP):
                    package, version = _dist_of(ep)
                    candidates.append((ep.name, package, version, ep.load))
            for name, obj in self.extra_plugins:
                package, version = _dist_of_object(obj)
                candidates.append((name, package or name, version, lambda obj=obj: obj))
            candidates.sort(key=lambda c: (_load_rank(c[0], c[1]), c[0], c[1]))
            order: list[str] = []
            for name, package, version, loader in candidates:
                if not self._wanted(name, package):
                    self.skipped.append(name)
                    continue
                if pm.has_plugin(name) or name in self.plugins:
                    self.errors.append(LoadError(name, package, "import", f"a plugin named {name!r} is already loaded"))
                    continue
                try:
                    plugin = loader()
                except Exception as exc:
                    self._record(name, package, "import", f"could not be imported: {type(exc).__name__}: {exc}")
                    continue
                try:
                    pm.register(plugin, name=name)
                    pm.check_pending()
                except Exception as exc:
                    if pm.has_plugin(name):
                        pm.unregister(name=name)
                    self._record(name, package, "hooks", f"has invalid hooks: {exc}")
                    continue
                self.plugins[name] = (package, version)
                order.append(name)
            impls = {impl.plugin_name: impl for impl in pm.hook.medgen_register_families.get_hookimpls()}
            for name in order:
                impl = impls.get(name)
                if impl is None:
                    continue
                package, version = self.plugins[name]
                register = self._make_register(name, package, version)
                kwargs = {"register": register}
                try:
                    impl.function(*[kwargs[a] for a in impl.argnames])
                except Exception as exc:
                    self._record(name, package, "register", f"raised while registering: {type(exc).__name__}: {exc}")
            self._loaded = True
            return self

    reload = load

    def _record(self, plugin: str, package: str, stage: str, message: str, family_id: str | None = None) -> None:
        # kept, not printed: `medgen families` and the Families panel show it once
        err = LoadError(plugin, package, stage, message, traceback.format_exc(), family_id)
        log.debug("medgen plugin %r (%s): %s", plugin, package or "?", message)
        self.errors.append(err)

    def _make_register(self, plugin: str, package: str, version: str) -> Callable[[Any], None]:
        def register(family: Any) -> None:
            problems = validate_family(family)
            fid = getattr(family, "id", "?")
            if problems:
                self._record(plugin, package, "family", f"family {fid!r} rejected: {'; '.join(problems)}")
                return
            builtin = _is_builtin(plugin, package)
            if family.id.startswith(RESERVED_PREFIX) and not builtin:
                self._record(
                    plugin,
                    package,
                    "clash",
                    f"family id {family.id!r} from {package or plugin} is refused: ids starting with "
                    f"{RESERVED_PREFIX!r} belong to {BUILTIN_PACKAGE}'s built-in families",
                    family.id,
                )
                return
            existing = self._entries.get(family.id)
            if existing is not None:
                self._record(
                    plugin,
                    package,
                    "clash",
                    f"family id {family.id!r} from {package or plugin} is already registered by "
                    f"{existing.package or existing.plugin}; {package or plugin}'s family is not registered",
                    family.id,
                )
                return
            self._entries[family.id] = FamilyEntry(family, plugin, package, version)

        return register

    # -- lookup ------------------------------------------------------------------
    def families(self, task: Task | str | None = None) -> list[FamilyEntry]:
        """Registered families, optionally of one task: built-in first, then by id."""
        entries = list(self._entries.values())
        if task is not None:
            t = Task(task)
            entries = [e for e in entries if e.task == t]
        return sorted(entries, key=lambda e: (-int(getattr(e.family, "priority", 0)), e.id))

    def get(self, family_id: str, task: Task | str | None = None) -> FamilyEntry:
        entry = self._entries.get(family_id)
        if entry is None:
            pool = self.families(task)
            known = ", ".join(e.id for e in pool) or "none"
            failed = f" ({len(self.errors)} plugin(s) failed to load: see `medgen families`)" if self.errors else ""
            raise PluginError(
                f"unknown family {family_id!r}; available{f' for {Task(task).value}' if task else ''}: {known}{failed}"
            )
        if task is not None and entry.task != Task(task):
            raise PluginError(f"family {family_id!r} is {_article(entry.task.value)} {entry.task.value} family, "
                              f"not {_article(Task(task).value)} {Task(task).value} family")
        return entry

    def default(self, task: Task | str) -> FamilyEntry:
        entries = self.families(task)
        if not entries:
            raise PluginError(
                f"no {Task(task).value} family is installed; install medgen-classic or a plugin that provides one"
            )
        return entries[0]

    def __contains__(self, family_id: str) -> bool:
        return family_id in self._entries


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


_REGISTRY: Registry | None = None
_REGISTRY_LOCK = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        if _REGISTRY is None:
            _REGISTRY = Registry()
        return _REGISTRY


def set_registry(registry: Registry | None) -> None:
    """Replace the process-wide registry (tests, embedding); None forces a reload."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        _REGISTRY = registry
