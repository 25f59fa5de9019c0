"""The starter for family authors: write a complete, installable napari-medgen plugin package.

``medgen plugins new NAME [--dir DIR] [--task TASK]`` calls :func:`new_plugin`. The package it
writes is derived from the medgen-template plugin (``plugins/medgen-template``): one module
that is both the family and the plugin, commented so that the author learns the contract
from it, plus its ``pyproject.toml`` (entry point in the group ``napari_medgen``), a test
file, a README and a ``.gitignore``::

    FOLDER/
        pyproject.toml
        README.md
        .gitignore
        <import_name>/__init__.py      the family and the @hookimpl that registers it
        tests/test_<import_name>.py    runs the family with its default parameters; registers it

The family works as written for its task: a short NumPy/SciPy method with exactly two typed
parameters, the outputs the task's docks and CLI expect, progress and cancellation, and an
input that is never modified. The template files are package data in
``napari_medgen/starter_files``; ``{{key}}`` placeholders are filled in by :func:`render`.

Names: ``NAME`` (``"medgen-edge"``, ``"My Edge Map"``) is normalised to a distribution name
(lower case, each run of other characters a ``-``: ``"my-edge-map"``), which is also the
entry-point name; the import name replaces ``-`` by ``_`` (``my_edge_map``) and the family id
is ``<import_name>.<method>``. A name whose import name is not a valid module name, or would
shadow napari-medgen, its own plugins, the standard library or another installed
distribution's module, is refused before anything is written.

Writing: a new (or empty) folder is assembled beside its final place under a hidden name and
renamed into place at once, so a failure leaves nothing behind. Into a folder that is not empty
(``overwrite=True`` only) the generated files are written together through
:class:`napari_medgen.io.output.OutputTransaction` (all replaced or none); other files in the
folder are left as they are.
"""

from __future__ import annotations

import errno
import importlib.metadata as im
import importlib.resources
import json
import keyword
import os
import re
import secrets
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .errors import InputError, OutputError
from .family import Task
from .io.output import PARTIAL_SUFFIX, OutputTransaction, write_bytes
from .io.output import _reason as write_reason
from .registry import _ID_RE, ENTRY_POINT_GROUP, RESERVED_PREFIX

__all__ = [
    "StarterResult",
    "SUPPORTED_TASKS",
    "new_plugin",
    "plugin_names",
    "render",
    "template_text",
]

#: import names a plugin may not take: napari-medgen, its own plugins, napari, and the folder of the tests
RESERVED_IMPORT_NAMES = frozenset(
    {"napari_medgen", "medgen_classic", "medgen_template", "napari", "medgen", "tests", "test"}
)
#: entry-point names napari-medgen and its own plugins already use in the group ``napari_medgen``
RESERVED_ENTRY_NAMES = frozenset({"builtin", "classic", "template"})
#: a longer name makes file names (and the hidden temporary folder's) unwieldy
MAX_NAME_LENGTH = 80
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_FILES = "starter_files"


@dataclass(frozen=True)
class _TaskStarter:
    """What the starter writes for one task: the method's template and how to present it."""

    task: Task
    #: the family id's second part: ``<import_name>.<short>``
    short: str
    class_name: str
    #: the method, as the family's display name starts
    title: str
    #: what the family does, a verb phrase for the README and ``pyproject.toml``'s description
    summary: str
    uses_scipy: bool
    #: the ``medgen run`` line of the README (``{family_id}`` is filled in)
    example: str


_TASKS: dict[Task, _TaskStarter] = {
    Task.ANOMALY: _TaskStarter(
        Task.ANOMALY, "residual", "ResidualZMap", "Residual z-map",
        "maps how far each voxel differs from its Gaussian-smoothed neighbourhood, as a robust z-score "
        "inside the scan's foreground (a heatmap)",
        True,
        "medgen run anomaly scan.nii.gz -o scan_z.nii.gz --family {family_id} \\\n"
        "    --param smooth_mm=3 --param polarity=bright",
    ),
    Task.HARMONIZE: _TaskStarter(
        Task.HARMONIZE, "percentile", "PercentileMatching", "Percentile matching",
        "rescales a scan linearly so that its foreground's low and high intensity percentiles match "
        "a reference scan's",
        False,
        "medgen run harmonize scan.nii.gz -o scan_matched.nii.gz --reference ref.nii.gz \\\n"
        "    --family {family_id} --param upper_percentile=99 --param clip=true",
    ),
    Task.SUPERRES: _TaskStarter(
        Task.SUPERRES, "interp", "FineGridInterpolation", "Fine-grid interpolation",
        "resamples a scan onto a finer isotropic grid covering the same field of view, by linear or "
        "cubic B-spline interpolation",
        True,
        "medgen run superres thick.nii.gz -o thick_1mm.nii.gz --family {family_id} \\\n"
        "    --param spacing_mm=1.0 --param order=cubic",
    ),
    Task.LESION: _TaskStarter(
        Task.LESION, "spheres", "SphericalLesions", "Spherical lesions",
        "inserts soft-edged spherical lesions, brighter than the surrounding tissue, at given points or "
        "at random in the foreground, with their label mask",
        False,
        "medgen run lesion scan.nii.gz -o scan_lesions.nii.gz --family {family_id} \\\n"
        "    --count 3 --param diameter_mm=10      # also writes scan_lesions_mask.nii.gz",
    ),
}

#: the tasks :func:`new_plugin` writes a family for (every :class:`Task`)
SUPPORTED_TASKS: tuple[str, ...] = tuple(t.value for t in Task if t in _TASKS)


@dataclass(frozen=True)
class StarterResult:
    """What :func:`new_plugin` wrote: the folder, the names it chose and the files."""

    folder: Path
    #: the distribution name (``pyproject.toml``'s ``[project] name``)
    distribution: str
    #: the package's import name (the folder of ``__init__.py``)
    import_name: str
    family_id: str
    #: the name in ``[project.entry-points.napari_medgen]`` (the distribution name)
    entry_point: str
    task: str
    #: every file written, absolute paths in ``folder``
    files: list[Path] = field(default_factory=list)

    @property
    def next_steps(self) -> list[str]:
        """The commands that install, list and test the new plugin."""
        return [
            f"medgen plugins install {self.folder}",
            "medgen families",
            f"python -m pytest {self.folder / 'tests'}",
        ]


# -- names ------------------------------------------------------------------------------------
def _canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _is_medgen_plugin(distribution: str) -> bool:
    """Whether the installed ``distribution`` declares an entry point in the group ``napari_medgen``."""
    try:
        return any(ep.group == ENTRY_POINT_GROUP for ep in im.distribution(distribution).entry_points)
    except Exception:  # pragma: no cover - not installed after all, or broken metadata
        return False


def _taken_by_other_distribution(import_name: str, distribution: str) -> str:
    """The installed distribution that provides the module ``import_name``, unless it is this plugin, or "".

    An installed distribution of the same name counts as this plugin (generated again, e.g.
    after ``pip install -e``) only if it is a napari-medgen plugin: ``numpy`` is not.
    """
    try:
        owners = im.packages_distributions().get(import_name) or []
    except Exception:  # pragma: no cover - broken metadata of some installed distribution
        return ""
    for owner in owners:
        if _canonical(owner) != _canonical(distribution) or not _is_medgen_plugin(owner):
            return owner
    return ""


def _entry_point_owner(entry: str, distribution: str) -> str:
    """The distribution (other than ``distribution``) that already has entry point ``entry``, or ""."""
    try:
        eps = im.entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # pragma: no cover - broken metadata of some installed distribution
        return ""
    for ep in eps:
        if ep.name != entry:
            continue
        dist = getattr(ep, "dist", None)
        owner = (dist.metadata["Name"] if dist is not None else "") or ""
        if _canonical(owner) != _canonical(distribution):
            return owner or "another distribution"
    return ""


def plugin_names(name: str) -> tuple[str, str]:
    """``(distribution name, import name)`` for the name an author gives, or :class:`InputError`.

    ``"My Edge Map"`` gives ``("my-edge-map", "my_edge_map")``. Refused: an empty or
    non-ASCII name, an import name that starts with a digit or is a Python keyword, one that
    would shadow napari-medgen, its plugins, a standard-library module or a module of another
    installed distribution, and an entry-point name already used by another plugin.
    """
    raw = name.strip() if isinstance(name, str) else ""
    if not raw:
        raise InputError("the plugin name is empty; give a distribution name such as 'medgen-edge'")
    if not raw.isascii():
        raise InputError(
            f"the plugin name {name!r} has non-ASCII characters; use letters a-z, digits and '-', "
            "e.g. 'medgen-edge'"
        )
    distribution = re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")
    if not distribution:
        raise InputError(f"the plugin name {name!r} has no letter or digit; give one such as 'medgen-edge'")
    if len(distribution) > MAX_NAME_LENGTH:
        raise InputError(
            f"the plugin name {distribution!r} is {len(distribution)} characters long; "
            f"use at most {MAX_NAME_LENGTH}"
        )
    import_name = distribution.replace("-", "_")
    said = f"the plugin name {name!r} gives the import name {import_name!r}"
    prefixed, suffixed = f"e.g. 'medgen-{distribution}'", f"e.g. '{distribution}-family'"
    if import_name[0].isdigit():
        raise InputError(f"{said}, which starts with a digit; start the name with a letter, {prefixed}")
    if not import_name.isidentifier() or keyword.iskeyword(import_name):
        raise InputError(f"{said}, which is a Python keyword; choose another name, {prefixed}")
    if import_name in RESERVED_IMPORT_NAMES:
        raise InputError(f"{said}, which napari-medgen already uses; choose another name, {suffixed}")
    if import_name in sys.stdlib_module_names:
        raise InputError(
            f"{said}, which would shadow the standard library's module {import_name!r}; "
            f"choose another name, {prefixed}"
        )
    owner = _taken_by_other_distribution(import_name, distribution)
    if owner:
        raise InputError(
            f"{said}, which the installed distribution {owner!r} already provides; "
            f"choose another name, e.g. 'medgen-{distribution}'"
        )
    if distribution in RESERVED_ENTRY_NAMES:
        owner = "napari-medgen"
    else:
        owner = _entry_point_owner(distribution, distribution)
    if owner:
        raise InputError(
            f"the plugin name {distribution!r} is already the name of a napari-medgen plugin (from {owner}); "
            f"choose another name, e.g. '{distribution}-family'"
        )
    return distribution, import_name


def _family_id(import_name: str, starter: _TaskStarter) -> str:
    family_id = f"{import_name}.{starter.short}"
    # plugin_names already makes sure of both: the registry would refuse the family otherwise
    if not _ID_RE.match(family_id) or family_id.startswith(RESERVED_PREFIX):  # pragma: no cover
        raise InputError(f"the family id {family_id!r} is not allowed; choose another plugin name")
    return family_id


def _starter_for(task: Task | str) -> _TaskStarter:
    try:
        t = Task(task.value if isinstance(task, Task) else str(task).strip().lower())
    except ValueError:
        raise InputError(
            f"unknown task {task!r}; the starter writes a family for {', '.join(SUPPORTED_TASKS)}"
        ) from None
    if t not in _TASKS:  # pragma: no cover - every task has a starter
        raise InputError(f"the starter has no family for task {t.value}; use {', '.join(SUPPORTED_TASKS)}")
    return _TASKS[t]


# -- templates --------------------------------------------------------------------------------
def template_text(name: str) -> str:
    """The text of the template file ``name`` in ``napari_medgen/starter_files``."""
    return importlib.resources.files("napari_medgen").joinpath(_FILES, name).read_text(encoding="utf-8")


def render(text: str, values: dict[str, str]) -> str:
    """``text`` with each ``{{key}}`` replaced by ``values[key]``; an unknown key is a bug (KeyError)."""

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"starter template placeholder {{{{{key}}}}} has no value")
        return values[key]

    return _PLACEHOLDER.sub(fill, text)


def _toml_string(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's for ASCII text)."""
    return json.dumps(text, ensure_ascii=True)


def _files(
    distribution: str, import_name: str, family_id: str, starter: _TaskStarter, folder_name: str
) -> dict[str, str]:
    """Relative path -> text of every file of the package."""
    display_name = f"{starter.title} ({distribution})"
    deps = ["napari-medgen", "numpy>=1.24"] + (["scipy>=1.10"] if starter.uses_scipy else [])
    values = {
        "distribution": distribution,
        "import_name": import_name,
        "family_id": family_id,
        "entry_point": distribution,
        "class_name": starter.class_name,
        "display_name": display_name,
        "display_name_py": json.dumps(display_name),
        "task": starter.task.value,
        "task_title": starter.task.title,
        "summary": starter.summary,
        "description_toml": _toml_string(
            f"A napari-medgen {starter.task.value} family that {starter.summary}"
        ),
        "dependencies_toml": ", ".join(_toml_string(d) for d in deps),
        "example": starter.example.format(family_id=family_id),
        "medgen_version": __version__,
        "folder_arg": shlex.quote(f"./{folder_name}"),
    }
    return {
        "pyproject.toml": render(template_text("pyproject.toml.tmpl"), values),
        "README.md": render(template_text("README.md.tmpl"), values),
        ".gitignore": render(template_text("gitignore.tmpl"), values),
        f"{import_name}/__init__.py": render(template_text(f"{starter.task.value}.py.tmpl"), values),
        f"tests/test_{import_name}.py": render(template_text(f"test_{starter.task.value}.py.tmpl"), values),
    }


# -- writing ----------------------------------------------------------------------------------
def _reason(exc: OSError) -> str:
    """The user-facing reason of the one output path, plus the rename's own (the folder filled meanwhile)."""
    if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
        return "the folder was filled meanwhile"
    return write_reason(exc)


def _folder_state(folder: Path) -> str:
    """``"missing"``, ``"empty"`` or ``"full"``; :class:`InputError` for a file or an unreadable folder."""
    if not os.path.lexists(folder):
        return "missing"
    if not folder.is_dir():
        raise InputError(f"{str(folder)!r} is a file, not a folder; choose a folder for the new plugin")
    try:
        with os.scandir(folder) as entries:
            return "full" if any(True for _ in entries) else "empty"
    except OSError as exc:
        raise InputError(
            f"cannot read the folder {str(folder)!r} ({_reason(exc)}); choose another folder"
        ) from None


def _make_parents(folder: Path, made: list[Path]) -> None:
    """Create the missing folders above ``folder``, adding each to ``made`` (deepest first, to undo)."""
    missing = []
    p = folder.parent
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    if os.path.lexists(p) and not p.is_dir():
        raise InputError(f"{str(p)!r} is a file, not a folder; choose another place for the new plugin")
    for d in reversed(missing):
        os.mkdir(d)
        made.insert(0, d)


def _remove_dirs(dirs: list[Path]) -> None:
    for d in dirs:  # deepest first; only empty ones go
        try:
            os.rmdir(d)
        except OSError:
            pass


def _write_new(folder: Path, files: dict[str, str]) -> None:
    """Assemble the package under a hidden name beside ``folder``, then rename it into place."""
    made: list[Path] = []
    temp = folder.parent / f".{folder.name}.{os.getpid()}-{secrets.token_hex(4)}{PARTIAL_SUFFIX}"
    try:
        _make_parents(folder, made)
        os.mkdir(temp)
        for rel, text in files.items():
            path = temp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(path, text.encode("utf-8"), role="plugin file")  # the one output path, fsync'd
        try:
            os.rename(temp, folder)  # POSIX: also replaces an empty folder, atomically
        except OSError:
            if _folder_state(folder) != "empty":
                raise
            os.rmdir(folder)  # a system where rename does not replace an empty folder
            os.rename(temp, folder)
    except BaseException as exc:
        shutil.rmtree(temp, ignore_errors=True)
        _remove_dirs(made)
        # a file's write (the output path's OutputError keeps the OSError as its context) or the rename
        cause = exc.__context__ if isinstance(exc, OutputError) else exc
        if isinstance(cause, OSError):
            raise OutputError(
                f"could not write the plugin to {str(folder)!r}: {_reason(cause)}; nothing was written"
            ) from None
        raise


def _write_into(folder: Path, files: dict[str, str]) -> None:
    """Write the files into an existing folder together: all replaced, or none (other files stay)."""
    for rel in files:
        path = folder / rel
        if path.is_dir():
            raise InputError(f"{str(path)!r} is a folder where the plugin's file goes; move it away first")
        if os.path.lexists(path.parent) and not path.parent.is_dir():
            raise InputError(f"{str(path.parent)!r} is a file where the plugin needs a folder; move it away")
    made: list[Path] = []
    try:
        for sub in sorted({(folder / rel).parent for rel in files}):
            if not os.path.lexists(sub):
                os.mkdir(sub)
                made.insert(0, sub)
        with OutputTransaction(overwrite=True) as tx:
            for rel, text in files.items():
                data = text.encode("utf-8")
                tx.add(folder / rel, lambda fh, data=data: fh.write(data), role=f"plugin file {rel!r}")
            tx.commit()
    except OSError as exc:
        _remove_dirs(made)
        raise OutputError(
            f"could not write the plugin to {str(folder)!r}: {_reason(exc)}; nothing was written"
        ) from None
    except BaseException:
        _remove_dirs(made)
        raise


def new_plugin(
    name: str,
    folder: str | os.PathLike | None = None,
    *,
    task: Task | str = "anomaly",
    overwrite: bool = False,
    hint: str = "use --overwrite (overwrite=True) to write the plugin's files into it",
) -> StarterResult:
    """Write a complete, installable napari-medgen plugin package for ``task`` into ``folder``.

    ``name`` is the distribution name the author wants (normalised by :func:`plugin_names`);
    ``folder`` defaults to ``./<distribution name>``. A folder that exists and is not empty is
    refused unless ``overwrite`` (then the generated files replace theirs, other files stay);
    ``hint`` ends that refusal (the CLI names its ``--overwrite``). Raises :class:`InputError`
    for a bad name, task or folder (nothing written) and :class:`OutputError` when writing
    fails (nothing left half-written).
    """
    starter = _starter_for(task)
    distribution, import_name = plugin_names(name)
    family_id = _family_id(import_name, starter)
    if folder is None or not str(os.fspath(folder)).strip():
        target = Path.cwd() / distribution
    else:
        target = Path(os.path.abspath(os.path.expanduser(os.fspath(folder))))
    if os.path.islink(target):  # write where the link points; never replace the link itself
        target = Path(os.path.realpath(target))
    state = _folder_state(target)
    if state == "full" and not overwrite:
        raise InputError(
            f"the folder {str(target)!r} exists and is not empty; choose a new or empty folder, or {hint}"
        )
    files = _files(distribution, import_name, family_id, starter, target.name)
    if state == "full":
        _write_into(target, files)
    else:
        _write_new(target, files)
    return StarterResult(
        folder=target,
        distribution=distribution,
        import_name=import_name,
        family_id=family_id,
        entry_point=distribution,
        task=starter.task.value,
        files=[target / rel for rel in files],
    )
