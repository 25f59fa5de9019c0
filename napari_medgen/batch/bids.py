"""Find the scans of a batch run and name its outputs as a BIDS derivative.

Pure path logic (no Qt, no napari, no dask, no pybids, and no file is opened except a few
bytes of a candidate DICOM file for a better error message):

* :func:`collect_inputs` turns what a user typed (NIfTI files, folders, glob patterns, BIDS
  dataset roots) into a sorted, de-duplicated list of :class:`ScanInput`, with BIDS filters
  (participant, session, suffix, datatype);
* :func:`output_paths` (one scan) and :func:`plan_outputs` (a cohort, collisions refused)
  name the outputs: ``sub-01/anat/sub-01_desc-<desc>_T1w.nii.gz`` for a BIDS scan,
  ``<relative path>_desc-<desc>.nii.gz`` otherwise;
* :func:`dataset_description` and :func:`sources_entry` write the derivative's metadata.

BIDS names are matched by :func:`parse_bids_name`: ``sub-<label>[_<key>-<label>...]_<suffix><ext>``
with keys lowercase letters/digits and labels and suffix ASCII letters/digits. A scan is
BIDS when it lies at ``sub-<label>/[ses-<label>/]<datatype>/<name>`` under the nearest folder
holding ``dataset_description.json`` (the BIDS root), and its name's ``sub`` (and ``ses``)
agree with those folders.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Union

from ..errors import InputError, OutputPathError

__all__ = [
    "ScanInput",
    "parse_bids_name",
    "collect_inputs",
    "desc_label",
    "check_desc",
    "output_paths",
    "plan_outputs",
    "bids_roots",
    "dataset_description",
    "sources_entry",
    "BIDS_VERSION",
    "DEFAULT_DATATYPES",
    "NIFTI_EXTENSIONS",
]

#: the BIDS version a derivative written by :func:`dataset_description` follows
BIDS_VERSION = "1.9.0"
#: the datatype folders :func:`collect_inputs` keeps by default
DEFAULT_DATATYPES: tuple[str, ...] = ("anat",)
#: the file endings read as NIfTI (matched case-insensitively outside BIDS datasets)
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")

_DESCRIPTION = "dataset_description.json"
_LABEL = re.compile(r"[A-Za-z0-9]+")
_KEY = re.compile(r"[a-z0-9]+")
_EXTENSION = re.compile(r"(\.[A-Za-z0-9]+)*")
_MAGIC = re.compile(r"[*?[]")
_LOOKED_FOR = "(looked for *.nii, *.nii.gz)"
_BIDS_LAYOUT = "sub-<label>/[ses-<label>/]<datatype>/sub-<label>[_ses-<label>]_..._<suffix>.nii[.gz]"
_DCM2NIIX = "convert the series to NIfTI first, e.g. with dcm2niix (dcm2niix -z y -o <folder> <dicom folder>)"
#: how many files of a folder are opened at most to look for DICOM's magic bytes
_DICOM_PROBES = 64

Entities = tuple[tuple[str, str], ...]
PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class ScanInput:
    """One scan of a batch: where it is, how it is named, and (for BIDS) what its entities are.

    ``path`` is absolute with its folders resolved (``..`` and linked folders) but the file
    name kept as found, so a linked file (git-annex, DataLad) keeps its ``.nii.gz`` name.
    ``relpath`` is POSIX and relative to the BIDS root for a BIDS scan, else to the folder
    (or the fixed start of the glob pattern) it was found under, else just the file name.
    ``entities`` and ``suffix`` come from the file name whenever it parses as a BIDS name;
    ``bids_root`` and ``datatype`` are set only for a scan of a BIDS dataset.
    """

    path: Path
    relpath: str
    bids_root: Path | None = None
    entities: Entities = ()
    suffix: str = ""
    datatype: str = ""

    def entity(self, key: str, default: str = "") -> str:
        """The label of entity ``key`` (``"sub"``, ``"ses"``, ``"run"``...), or ``default``."""
        for k, label in self.entities:
            if k == key:
                return label
        return default

    @property
    def subject(self) -> str:
        """The participant label (``"01"`` for ``sub-01``), or ``""``."""
        return self.entity("sub")

    @property
    def session(self) -> str:
        """The session label (``"pre"`` for ``ses-pre``), or ``""``."""
        return self.entity("ses")

    @property
    def is_bids(self) -> bool:
        """True for a scan of a BIDS dataset (outputs named and placed the BIDS way)."""
        return self.bids_root is not None and self.suffix != ""

    @property
    def key(self) -> str:
        """A stable id: the relative path in its BIDS dataset, else the absolute path.

        Unique within one :func:`collect_inputs` result (two scans that would share it
        would also share their outputs, which :func:`collect_inputs` refuses).
        """
        return self.relpath if self.is_bids else str(self.path)


# --------------------------------------------------------------------------- names


def parse_bids_name(name: str) -> tuple[Entities, str, str] | None:
    """``(entities, suffix, extension)`` of a BIDS file name, or None when it is not one.

    ``"sub-01_ses-pre_acq-fast_run-2_T1w.nii.gz"`` gives
    ``((("sub", "01"), ("ses", "pre"), ("acq", "fast"), ("run", "2")), "T1w", ".nii.gz")``.
    The name must start with ``sub-<label>``; keys are lowercase letters/digits, labels and
    the suffix ASCII letters/digits, no key twice; the extension starts at the first dot.
    """
    if not isinstance(name, str) or "/" in name or "\\" in name:
        return None
    stem, dot, rest = name.partition(".")
    extension = dot + rest
    if not _EXTENSION.fullmatch(extension):
        return None
    *pairs, suffix = stem.split("_")
    if not pairs or not _LABEL.fullmatch(suffix):
        return None
    entities: list[tuple[str, str]] = []
    for pair in pairs:
        key, sep, label = pair.partition("-")
        if not sep or not _KEY.fullmatch(key) or not _LABEL.fullmatch(label):
            return None
        if any(key == k for k, _ in entities):
            return None
        entities.append((key, label))
    if entities[0][0] != "sub":
        return None
    return tuple(entities), suffix, extension


def _alnum(text: str) -> str:
    return "".join(ch for ch in text if ch.isascii() and ch.isalnum())


def _is_nifti_name(name: str) -> bool:
    return name.lower().endswith(NIFTI_EXTENSIONS)


def _strip_nifti(name: str) -> str:
    for ext in NIFTI_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _bids_layout(parts: Sequence[str]) -> tuple[Entities, str, str] | None:
    """``(entities, suffix, datatype)`` when ``parts`` (relative to a BIDS root) is a BIDS scan."""
    if len(parts) not in (3, 4):
        return None
    parsed = parse_bids_name(parts[-1])
    if parsed is None or parsed[2] not in (".nii", ".nii.gz"):
        return None
    entities, suffix, _ = parsed
    labels = dict(entities)
    if parts[0] != f"sub-{labels['sub']}":
        return None
    if len(parts) == 4:
        if parts[1] != f"ses-{labels.get('ses', '')}":
            return None
    elif "ses" in labels:
        return None
    datatype = parts[-2]
    if not _KEY.fullmatch(datatype):
        return None
    return entities, suffix, datatype


# --------------------------------------------------------------------------- finding scans


def _absolute(path: PathLike) -> Path:
    """Absolute, ``..`` removed lexically (what the user sees; links not followed)."""
    return Path(os.path.abspath(os.fspath(path)))


def _located(path: Path) -> Path:
    """The folders resolved, the file name kept (a linked file keeps its own name)."""
    return Path(os.path.realpath(path.parent)) / path.name


def _find_root(folder: Path, cache: dict[Path, Path | None]) -> Path | None:
    """The nearest folder at or above ``folder`` holding ``dataset_description.json``."""
    visited = []
    found: Path | None = None
    for candidate in (folder, *folder.parents):
        if candidate in cache:
            found = cache[candidate]
            break
        visited.append(candidate)
        if (candidate / _DESCRIPTION).is_file():
            found = candidate
            break
    for candidate in visited:
        cache[candidate] = found
    return found


def _classify(path: Path, relpath: str, cache: dict[Path, Path | None]) -> ScanInput:
    """A NIfTI file found outside a BIDS root scan: BIDS when its nearest root says so."""
    root = _find_root(path.parent, cache)
    if root is not None:
        parts = path.relative_to(root).parts
        layout = _bids_layout(parts)
        if layout is not None:
            entities, suffix, datatype = layout
            return ScanInput(_located(path), "/".join(parts), root, entities, suffix, datatype)
    parsed = parse_bids_name(path.name)
    entities, suffix = (parsed[0], parsed[1]) if parsed is not None else ((), "")
    return ScanInput(_located(path), relpath, None, entities, suffix, "")


def _raise_walk_error(exc: OSError) -> None:
    reason = exc.strerror or type(exc).__name__
    raise InputError(f"cannot read folder '{exc.filename}': {reason}")


class _Walker:
    """The folder walks of one :func:`collect_inputs` call (shared caches and exclusions)."""

    def __init__(self, exclude: Iterable[PathLike]) -> None:
        self.roots: dict[Path, Path | None] = {}
        self.exclude = {Path(os.path.realpath(os.fspath(p))) for p in exclude}

    def _skip(self, real: Path, seen: set[Path]) -> bool:
        if real in seen or real in self.exclude:
            return True
        seen.add(real)
        return False

    def bids_root(self, root: Path) -> list[ScanInput]:
        """Every scan at ``sub-*/[ses-*/]<datatype>/`` of a BIDS root (other folders skipped)."""
        scans = []
        seen: set[Path] = set()
        for dirpath, dirnames, filenames in os.walk(root, onerror=_raise_walk_error, followlinks=True):
            here = Path(dirpath)
            if self._skip(Path(os.path.realpath(here)), seen):
                dirnames[:] = []
                continue
            depth = len(here.relative_to(root).parts)
            if depth == 0:
                # derivatives/, sourcedata/, code/, hidden folders... all fail this test
                dirnames[:] = sorted(d for d in dirnames if d.startswith("sub-"))
            else:
                dirnames[:] = [] if depth >= 3 else sorted(d for d in dirnames if not d.startswith("."))
            if depth < 2:
                continue
            for name in sorted(filenames):
                parts = (*here.relative_to(root).parts, name)
                layout = _bids_layout(parts)
                if layout is not None and not name.startswith("."):
                    entities, suffix, datatype = layout
                    located = _located(here / name)
                    scans.append(ScanInput(located, "/".join(parts), root, entities, suffix, datatype))
        return scans

    def folder(self, folder: Path, base: Path) -> list[ScanInput]:
        """Every ``*.nii``/``*.nii.gz`` below ``folder``, hidden ones skipped, a BIDS root inside as one."""
        scans = []
        seen: set[Path] = set()
        for dirpath, dirnames, filenames in os.walk(folder, onerror=_raise_walk_error, followlinks=True):
            here = Path(dirpath)
            if self._skip(Path(os.path.realpath(here)), seen):
                dirnames[:] = []
                continue
            if _DESCRIPTION in filenames and (here / _DESCRIPTION).is_file():
                scans.extend(self.bids_root(here))
                dirnames[:] = []
                continue
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or not _is_nifti_name(name):
                    continue
                path = here / name
                if os.path.isdir(path):
                    continue
                scans.append(self.file(path, os.path.relpath(path, base)))
        return scans

    def file(self, path: Path, relpath: str) -> ScanInput:
        return _classify(path, PurePosixPath(Path(relpath).as_posix()).as_posix(), self.roots)


def _looks_dicom(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(".dcm") or name == "dicomdir":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _has_dicom(paths: Iterable[Path]) -> bool:
    """True when one of the first files (by name, then DICOM magic bytes) is DICOM."""
    for n, path in enumerate(paths):
        if n >= _DICOM_PROBES:
            return False
        if path.is_file() and _looks_dicom(path):
            return True
    return False


def _folder_files(folder: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def _glob_base(pattern: str) -> Path:
    """The folder a pattern's matches are named relative to: its parts before the first wildcard."""
    fixed = []
    for part in Path(pattern).parts:
        if _MAGIC.search(part):
            break
        fixed.append(part)
    return _absolute(Path(*fixed)) if fixed else _absolute(".")


def _dicom_refused(what: str) -> InputError:
    return InputError(f"{what}, which medgen batch does not read: {_DCM2NIIX}")


def _not_nifti(path: Path, shown: str) -> InputError:
    if path.is_file() and _looks_dicom(path):
        return _dicom_refused(f"'{shown}' is a DICOM file")
    return InputError(f"'{shown}' is not a NIfTI file (.nii, .nii.gz)")


def _from_input(raw: Any, walker: _Walker) -> list[ScanInput]:
    """The scans one input stands for (raises when it stands for none)."""
    text = os.fspath(raw)
    if not str(text).strip():
        raise InputError("an input path is empty")
    shown = str(text)
    path = _absolute(text)
    if not os.path.lexists(path):
        if _MAGIC.search(shown):
            return _from_glob(shown, walker)
        raise InputError(f"input '{shown}' does not exist")
    if path.is_dir():
        if (path / _DESCRIPTION).is_file():
            scans = walker.bids_root(path)
            if not scans:
                raise InputError(
                    f"no NIfTI scans found in BIDS dataset '{shown}' (looked for {_BIDS_LAYOUT})"
                )
            return scans
        scans = walker.folder(path, path)
        if not scans:
            if _has_dicom(_folder_files(path)):
                raise _dicom_refused(f"'{shown}' holds DICOM files")
            raise InputError(f"no NIfTI scans found in '{shown}' {_LOOKED_FOR}")
        return scans
    if not _is_nifti_name(path.name):
        raise _not_nifti(path, shown)
    return [walker.file(path, path.name)]


def _from_glob(pattern: str, walker: _Walker) -> list[ScanInput]:
    matches = sorted(glob.glob(pattern, recursive=True))
    if not matches:
        raise InputError(f"no file matches '{pattern}'")
    base = _glob_base(pattern)
    scans: list[ScanInput] = []
    others: list[Path] = []
    for match in matches:
        path = _absolute(match)
        if path.is_dir():
            is_root = (path / _DESCRIPTION).is_file()
            scans.extend(walker.bids_root(path) if is_root else walker.folder(path, base))
        elif _is_nifti_name(path.name):
            scans.append(walker.file(path, os.path.relpath(path, base)))
        else:
            others.append(path)
    if not scans:
        if _has_dicom(others):
            raise _dicom_refused(f"the files matching '{pattern}' are DICOM")
        raise InputError(f"no NIfTI scans among the paths matching '{pattern}' {_LOOKED_FOR}")
    return scans


# --------------------------------------------------------------------------- filters


def _as_tuple(values: Any) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, (str, os.PathLike)):
        return (os.fspath(values),)
    return tuple(str(v) for v in values)


def _labels(values: Any, prefix: str, flag: str) -> tuple[str, ...]:
    out = []
    for value in _as_tuple(values):
        label = value.strip()
        if prefix and label.startswith(f"{prefix}-"):
            label = label[len(prefix) + 1:]
        if not _LABEL.fullmatch(label):
            example = f"'01' or '{prefix}-01'" if prefix else "'T1w'"
            raise InputError(f"{flag} {value!r} is not a BIDS label (letters and digits, e.g. {example})")
        out.append(label)
    return tuple(dict.fromkeys(out))


def _listing(values: Iterable[str]) -> str:
    items = sorted(set(v for v in values if v))
    if not items:
        return "none"
    shown = ", ".join(items[:12])
    return shown + (f" and {len(items) - 12} more" if len(items) > 12 else "")


def _apply_filters(
    scans: list[ScanInput],
    participants: tuple[str, ...],
    sessions: tuple[str, ...],
    suffixes: tuple[str, ...],
    datatypes: tuple[str, ...],
) -> list[ScanInput]:
    refusing = [
        flag
        for flag, values in (("--participant-label", participants), ("--session-label", sessions),
                             ("--suffix", suffixes))
        if values
    ]
    if refusing:
        for scan in scans:
            if not scan.is_bids:
                raise InputError(
                    f"{refusing[0]} works on BIDS datasets; '{scan.path}' is not part of one "
                    f"(a folder with {_DESCRIPTION} holding {_BIDS_LAYOUT})"
                )
    bids = [s for s in scans if s.is_bids]
    for flag, values, attr in (("--participant-label", participants, "subject"),
                               ("--session-label", sessions, "session"),
                               ("--suffix", suffixes, "suffix")):
        present = {getattr(s, attr) for s in bids}
        for value in values:
            if value not in present:
                raise InputError(f"{flag} {value} matches no scan (found: {_listing(present)})")
    kept = [
        s for s in scans
        if not s.is_bids or (
            (not participants or s.subject in participants)
            and (not sessions or s.session in sessions)
            and (not suffixes or s.suffix in suffixes)
            and (not datatypes or s.datatype in datatypes)
        )
    ]
    if not kept:
        used = [
            f"{what} {'|'.join(values)}"
            for what, values in (("participant", participants), ("session", sessions),
                                 ("suffix", suffixes), ("datatype", datatypes))
            if values
        ]
        raise InputError(
            f"none of the {len(scans)} NIfTI scans found matches {', '.join(used)} "
            f"(found datatypes {_listing(s.datatype for s in bids)}; "
            f"suffixes {_listing(s.suffix for s in bids)}; sessions {_listing(s.session for s in bids)})"
        )
    return kept


# --------------------------------------------------------------------------- collect


def collect_inputs(
    inputs: Sequence[PathLike],
    *,
    participant_labels: Sequence[str] = (),
    session_labels: Sequence[str] = (),
    suffixes: Sequence[str] = (),
    datatypes: Sequence[str] = DEFAULT_DATATYPES,
    exclude: Sequence[PathLike] = (),
) -> list[ScanInput]:
    """The scans named by ``inputs``, filtered, de-duplicated and sorted.

    Each input is a NIfTI file; a folder (searched recursively for ``*.nii``/``*.nii.gz``,
    hidden files and folders skipped, a BIDS dataset inside it scanned as one); a BIDS root
    (a folder with ``dataset_description.json``: only ``sub-*/[ses-*/]<datatype>/`` scans
    whose names parse, so ``derivatives/``, ``sourcedata/``, ``code/`` are skipped); or a glob
    pattern (``**`` allowed; its NIfTI files and folders are taken as above, relative paths
    start after the pattern's fixed folders). A file at the BIDS place of a BIDS dataset
    (nearest ``dataset_description.json`` above it), however given, is a BIDS scan with its
    entities; any other file is a plain scan, even inside a dataset.

    Filters apply to BIDS scans: ``participant_labels`` (``"01"`` or ``"sub-01"``),
    ``session_labels`` (``"pre"`` or ``"ses-pre"``), ``suffixes`` (``"T1w"``) and
    ``datatypes`` (default ``("anat",)``; empty: every datatype). Participant, session and
    suffix filters refuse non-BIDS scans, and each value must match some scan. ``exclude``
    folders are not searched (pass the output folder so a rerun does not pick up results).

    Duplicates (the same file reached twice) are kept once, the first way it was reached;
    the result is sorted by ``(bids_root or "", relpath)``. Raises :class:`InputError` (one
    sentence) for a missing path, a pattern without matches, a file that is not NIfTI, a
    DICOM folder (convert with dcm2niix), an input without scans, filters that leave
    nothing, a broken link, or two scans whose outputs would have the same name.
    """
    participants = _labels(participant_labels, "sub", "--participant-label")
    sessions = _labels(session_labels, "ses", "--session-label")
    wanted_suffixes = _labels(suffixes, "", "--suffix")
    wanted_datatypes = tuple(dict.fromkeys(d.strip() for d in _as_tuple(datatypes)))
    for datatype in wanted_datatypes:
        if not _KEY.fullmatch(datatype):
            raise InputError(f"--datatype {datatype!r} is not a BIDS datatype (e.g. 'anat', 'func')")
    items = _as_tuple(inputs)
    if not items:
        raise InputError("no input was given (a NIfTI file, a folder, a glob pattern or a BIDS dataset)")

    walker = _Walker(exclude)
    found: dict[Path, ScanInput] = {}
    for raw in items:
        for scan in _from_input(raw, walker):
            found.setdefault(scan.path, scan)
    scans = sorted(found.values(), key=_order)
    scans = _apply_filters(scans, participants, sessions, wanted_suffixes, wanted_datatypes)
    for scan in scans:
        if not scan.path.exists():
            raise InputError(
                f"'{scan.path}' is a broken link: its content is missing (in a DataLad dataset: datalad get)"
            )
    _refuse_shared_names(scans)
    return scans


def _order(scan: ScanInput) -> tuple[str, str, str]:
    return (str(scan.bids_root) if scan.bids_root is not None else "", scan.relpath, str(scan.path))


def _refuse_shared_names(scans: Sequence[ScanInput]) -> None:
    """Two scans whose main outputs would have the same name (letter case ignored) are refused."""
    owners: dict[str, ScanInput] = {}
    for scan in scans:
        folder, main, _ = _names(scan, "<desc>")
        name = (folder / f"{main}.nii.gz").as_posix()
        other = owners.setdefault(name.casefold(), scan)
        if other is not scan:
            raise InputError(
                f"'{other.path}' and '{scan.path}' would be written to the same output name '{name}'; "
                "give their common parent folder as the input instead, or run them in separate batches"
            )


# --------------------------------------------------------------------------- outputs


def desc_label(family_id: str) -> str:
    """A BIDS ``desc`` label for a family: the id after its first dot, letters and digits only.

    ``"medgen.harmonize_gan"`` -> ``"harmonizegan"``, ``"classic.cubic"`` -> ``"cubic"``;
    never empty (the whole id, then ``"medgen"``).
    """
    _, dot, rest = family_id.partition(".")
    return (_alnum(rest) if dot else "") or _alnum(family_id) or "medgen"


def check_desc(label: str) -> str:
    """A user-given ``--desc``, checked: a non-empty BIDS label (ASCII letters and digits)."""
    if isinstance(label, str) and _LABEL.fullmatch(label):
        return label
    suggestion = _alnum(label) if isinstance(label, str) else ""
    hint = f", e.g. '{suggestion}'" if suggestion else ""
    raise InputError(f"--desc {label!r} is not a BIDS label: use letters and digits only{hint}")


def _names(scan: ScanInput, desc: str) -> tuple[PurePosixPath, str, str]:
    """``(folder relative to outdir, main stem, stem prefix of the other outputs)``."""
    if scan.is_bids:
        entities = list(scan.entities)
        bad = [f"{k}-{v}" for k, v in entities if not _KEY.fullmatch(k) or not _LABEL.fullmatch(v)]
        bad_datatype = bool(scan.datatype) and not _KEY.fullmatch(scan.datatype)
        if not scan.subject or bad or bad_datatype or not _LABEL.fullmatch(scan.suffix):
            raise OutputPathError(f"'{scan.path}' has no usable BIDS name to derive output names from")
        at = next((i for i, (k, _) in enumerate(entities) if k == "desc"), None)
        if at is None:
            entities.append(("desc", desc))
        else:
            entities[at] = ("desc", desc)
        prefix = "_".join(f"{k}-{v}" for k, v in entities)
        folder = PurePosixPath(f"sub-{scan.subject}")
        if scan.session:
            folder /= f"ses-{scan.session}"
        if scan.datatype:
            folder /= scan.datatype
        return folder, f"{prefix}_{scan.suffix}", prefix
    rel = PurePosixPath(scan.relpath)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or "\\" in scan.relpath:
        raise OutputPathError(
            f"the relative path {scan.relpath!r} of '{scan.path}' would leave the output folder"
        )
    stem = f"{_strip_nifti(rel.name)}_desc-{desc}"
    return rel.parent, stem, stem


def output_paths(scan: ScanInput, outdir: Path, *, desc: str, output_names: Sequence[str]) -> dict[str, Path]:
    """Where a scan's outputs go: one path per output name (the first is the main image) and ``"sidecar"``.

    BIDS: ``outdir/sub-X[/ses-Y]/<datatype>/<entities>_desc-<desc>_<suffix>.nii.gz`` (an
    existing ``desc`` entity replaced), another output ``N``:
    ``<entities>_desc-<desc>_<N>.nii.gz`` (N letters and digits only), the sidecar
    ``<entities>_desc-<desc>_<suffix>.json``. Otherwise ``outdir/<relpath without .nii[.gz]>``
    ``_desc-<desc>.nii.gz``, ``..._desc-<desc>_<N>.nii.gz`` and ``..._desc-<desc>.json``.
    Raises :class:`InputError` for a bad ``desc``, :class:`OutputPathError` when a path would
    leave ``outdir`` or two outputs would share a name, ValueError for malformed ``output_names``.
    """
    desc = check_desc(desc)
    names = list(output_names)
    if not names:
        raise ValueError("output_names is empty (its first name is the main image)")
    if len(set(names)) != len(names) or "sidecar" in names:
        raise ValueError(f"output names {names!r} repeat a name or use the reserved name 'sidecar'")
    labels = [_alnum(n) for n in names[1:]]
    if not all(labels) or len({lab.casefold() for lab in labels}) != len(labels):
        raise ValueError(f"output names {names[1:]!r} must give distinct, non-empty alphanumeric labels")
    outdir = Path(outdir)
    folder, main, prefix = _names(scan, desc)
    where = outdir.joinpath(*folder.parts)
    paths = {names[0]: where / f"{main}.nii.gz"}
    for name, label in zip(names[1:], labels):
        paths[name] = where / f"{prefix}_{label}.nii.gz"
    paths["sidecar"] = where / f"{main}.json"
    if len({p.name.casefold() for p in paths.values()}) != len(paths):
        raise OutputPathError(
            f"the outputs of '{scan.path}' would share a file name "
            f"({', '.join(p.name for p in paths.values())})"
        )
    top = os.path.normpath(os.path.abspath(outdir))
    for path in paths.values():
        if os.path.commonpath([top, os.path.normpath(os.path.abspath(path))]) != top:
            raise OutputPathError(f"output '{path}' of '{scan.path}' would leave the output folder {outdir}")
    return paths


def plan_outputs(
    scans: Sequence[ScanInput], outdir: Path, *, desc: str, output_names: Sequence[str]
) -> dict[str, dict[str, Path]]:
    """:func:`output_paths` of every scan, keyed by :attr:`ScanInput.key`; shared paths refused.

    Raises :class:`OutputPathError` naming both scans when two of them (any output, letter
    case ignored) would write the same file.
    """
    plan: dict[str, dict[str, Path]] = {}
    owners: dict[str, ScanInput] = {}
    for scan in scans:
        paths = output_paths(scan, outdir, desc=desc, output_names=output_names)
        for path in paths.values():
            other = owners.setdefault(str(path).casefold(), scan)
            if other is not scan:
                raise OutputPathError(f"'{other.path}' and '{scan.path}' would both write '{path}'")
        if scan.key in plan:
            raise OutputPathError(f"'{plan[scan.key]}' and '{scan.path}' have the same key {scan.key!r}")
        plan[scan.key] = paths
    return plan


def bids_roots(scans: Iterable[ScanInput]) -> list[Path]:
    """The BIDS roots the scans come from, each once, in order of first appearance."""
    return list(dict.fromkeys(s.bids_root for s in scans if s.bids_root is not None))


def dataset_description(
    *,
    family_id: str,
    family_version: str,
    package: str,
    napari_medgen_version: str,
    source_roots: Sequence[Path],
    name: str | None = None,
) -> dict[str, Any]:
    """The ``dataset_description.json`` content of a BIDS derivative written by a batch run.

    With exactly one source root it is also linked as ``DatasetLinks["raw"]``, which the
    ``bids:raw:...`` values of :func:`sources_entry` refer to.
    """
    roots = [Path(os.path.abspath(os.fspath(r))) for r in source_roots]
    description: dict[str, Any] = {
        "Name": name if name is not None else f"napari-medgen {family_id}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "napari-medgen",
                "Version": napari_medgen_version,
                "Description": f"{family_id} {family_version} ({package})",
            }
        ],
        "SourceDatasets": [{"URL": root.as_uri()} for root in roots],
    }
    if len(roots) == 1:
        description["DatasetLinks"] = {"raw": roots[0].as_uri()}
    return description


def sources_entry(scan: ScanInput, *, link: str | None = "raw") -> str:
    """The BIDS ``Sources`` value of a derivative's sidecar: ``bids:raw:<relpath>``, else the file's URI.

    ``link`` names the source dataset in ``DatasetLinks``; pass None when a batch reads
    several BIDS datasets (one name cannot stand for all), to get file URIs throughout.
    """
    if scan.is_bids and link:
        return f"bids:{link}:{scan.relpath}"
    return Path(os.path.abspath(scan.path)).as_uri()
