"""The plain data model shared by the core, the plugins, the CLI and the docks.

A :class:`ModelFamily` declares what it does (task, parameters, extra inputs, license,
intended use) and implements ``run(inputs, params, ctx) -> Result``. Families never import
Qt or napari, so the same family runs in the viewer, the CLI, a notebook and a test.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from .errors import Cancelled, ParamError
from .volume import Volume

__all__ = [
    "AUTO",
    "training_steps_param",
    "Task",
    "Param",
    "InputSpec",
    "OutputSpec",
    "Inputs",
    "Output",
    "Result",
    "RunContext",
    "ModelFamily",
    "RESEARCH_USE",
]

RESEARCH_USE = "Research use only; not for diagnosis or treatment decisions."


class Task(str, enum.Enum):
    """The four tasks a family can serve; the value is the CLI name."""

    SUPERRES = "superres"
    ANOMALY = "anomaly"
    HARMONIZE = "harmonize"
    LESION = "lesion"

    @property
    def title(self) -> str:
        return {
            "superres": "Super-resolution",
            "anomaly": "Anomaly map",
            "harmonize": "Harmonize",
            "lesion": "Insert lesions",
        }[self.value]


#: the value of a parameter with ``auto``: the family works it out
AUTO = "auto"
_KINDS = {"int": int, "float": float, "bool": bool, "str": str, "choice": str}


@dataclass(frozen=True)
class Param:
    """A typed, documented family parameter; magicgui draws it and the CLI parses it.

    ``kind`` is one of ``int``, ``float``, ``bool``, ``str`` or ``choice`` (then
    ``choices`` lists the allowed strings). ``minimum``/``maximum`` bound numbers.
    ``auto`` (numbers only): the value may also be the string ``"auto"``, which the family
    works out itself; ``auto`` says how, in words (the dock shows it beside an "auto" check box).
    """

    name: str
    kind: Literal["int", "float", "bool", "str", "choice"]
    default: Any
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    label: str | None = None
    unit: str = ""
    #: "" for plain values; "read" or "write" for a file the run reads or writes (checked before compute)
    path: Literal["", "read", "write"] = ""
    #: for a path: the files it stands for are ``<value without suffix><suffix>`` for each suffix
    suffixes: tuple[str, ...] = ()
    #: numbers only: "auto" is also a valid value, described by this text (e.g. "estimated from the scan")
    auto: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ParamError(f"parameter name {self.name!r} is not a valid identifier")
        if self.kind not in _KINDS:
            raise ParamError(f"parameter {self.name!r}: unknown kind {self.kind!r}")
        if self.kind == "choice" and not self.choices:
            raise ParamError(f"parameter {self.name!r}: kind 'choice' needs choices")
        if self.path not in ("", "read", "write") or (self.path and self.kind != "str"):
            raise ParamError(f"parameter {self.name!r}: path must be '', 'read' or 'write' on a 'str' parameter")
        if self.auto and self.kind not in ("int", "float"):
            raise ParamError(f"parameter {self.name!r}: 'auto' is for int and float parameters")
        # the default must itself be valid
        object.__setattr__(self, "default", self.validate(self.default))

    @property
    def python_type(self) -> type:
        return _KINDS[self.kind]

    @property
    def display(self) -> str:
        text = self.label or self.name.replace("_", " ")
        return f"{text} ({self.unit})" if self.unit else text

    def files(self, value: Any) -> list[Path]:
        """The files a path parameter's value stands for (empty for no value or a non-path parameter)."""
        if not self.path or not str(value or "").strip():
            return []
        given = Path(str(value).strip()).expanduser()
        if not self.suffixes:
            return [given]
        base = given.with_suffix("") if given.suffix in self.suffixes else given
        return [base.with_name(base.name + suffix) for suffix in self.suffixes]

    def range_text(self) -> str:
        """The allowed range in words ("between 0 and 1", "at least 0"), or ""."""
        lo, hi = self.minimum, self.maximum
        if lo is not None and hi is not None:
            return f"between {lo:g} and {hi:g}"
        if lo is not None:
            return f"at least {lo:g}"
        if hi is not None:
            return f"at most {hi:g}"
        return ""

    def parse(self, text: str) -> Any:
        """Parse a command-line string into a validated value."""
        text = text.strip()
        if self.auto and text.lower() == "auto":
            return AUTO
        if self.kind == "bool":
            low = text.lower()
            if low in {"1", "true", "yes", "on"}:
                return True
            if low in {"0", "false", "no", "off"}:
                return False
            raise ParamError(f"parameter {self.name!r} expects true/false, got {text!r}")
        if self.kind == "int":
            try:
                as_float = float(text)
            except ValueError:
                raise ParamError(f"parameter {self.name!r} expects an integer, got {text!r}") from None
            if not as_float.is_integer():
                raise ParamError(f"parameter {self.name!r} expects an integer, got {text!r}")
            return self.validate(int(as_float))
        if self.kind == "float":
            try:
                number = float(text)
            except ValueError:
                raise ParamError(f"parameter {self.name!r} expects a number, got {text!r}") from None
            return self.validate(number)  # a range error keeps its own message
        return self.validate(text)

    def validate(self, value: Any) -> Any:
        """Return ``value`` coerced to the declared type, or raise :class:`ParamError`."""
        name = self.name
        if self.auto and isinstance(value, str) and value.strip().lower() == AUTO:
            return AUTO
        if self.kind == "bool":
            if isinstance(value, (bool, np.bool_)):
                return bool(value)
            raise ParamError(f"parameter {name!r} expects true/false, got {value!r}")
        if self.kind in ("int", "float"):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
                also = " or 'auto'" if self.auto else ""
                raise ParamError(f"parameter {name!r} expects a number{also}, got {value!r}")
            if self.kind == "int":
                if float(value) != int(value):
                    raise ParamError(f"parameter {name!r} expects an integer, got {value!r}")
                value = int(value)
            else:
                value = float(value)
                if not math.isfinite(value):
                    raise ParamError(f"parameter {name!r} must be finite, got {value!r}")
            if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
                raise ParamError(f"parameter {name!r} must be {self.range_text()}, got {value:g}")
            return value
        if not isinstance(value, str):
            raise ParamError(f"parameter {name!r} expects text, got {value!r}")
        if self.kind == "choice" and value not in self.choices:
            raise ParamError(f"parameter {name!r} must be one of {', '.join(self.choices)}; got {value!r}")
        return value

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "default": self.default,
            "help": self.help,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "choices": list(self.choices),
            "unit": self.unit,
            "path": self.path,
            "auto": self.auto,
        }


def training_steps_param(auto: str = "the preset's training time", what: str = "training") -> Param:
    """The ``max_steps`` parameter of a learned family: "auto" (the preset decides) or a step limit.

    Read it with :func:`napari_medgen.engine.training_limits`, which applies the rule the help states.
    """
    return Param("max_steps", "int", AUTO, minimum=1, maximum=10_000_000, label="training steps", auto=auto,
                 help=f"a step limit for {what}. With a step limit and no time budget, the same seed gives the same "
                 "result; a time budget makes the number of steps depend on the machine's speed")


@dataclass(frozen=True)
class InputSpec:
    """An extra input a family needs beside the main image.

    ``name`` is one of ``references`` (image volumes), ``points`` (voxel positions) or
    ``mask`` (a label volume on the main image's grid). ``same_grid`` asks that
    reference volumes have the main image's shape and spacing.
    """

    name: Literal["references", "points", "mask"]
    required: bool = False
    help: str = ""
    same_grid: bool = False
    min_count: int = 1
    max_count: int | None = None

    def __post_init__(self) -> None:
        if self.name not in ("references", "points", "mask"):
            raise ParamError(f"unknown extra input {self.name!r}; use references, points or mask")


@dataclass(frozen=True)
class OutputSpec:
    """An output a family promises, so that its file can be planned and checked before compute.

    ``name`` is the :class:`Output` name the result will carry; the CLI writes the first
    declared output to ``-o`` and each other one to ``<stem>_<name>.nii.gz``.
    """

    name: str
    kind: Literal["image", "labels", "heatmap"] = "image"
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ParamError(f"output name {self.name!r} is not a valid identifier")
        if self.kind not in ("image", "labels", "heatmap"):
            raise ParamError(f"output {self.name!r}: unknown kind {self.kind!r}")


@dataclass
class Inputs:
    """What a family receives: the main image and the extra inputs it declared.

    ``points`` are float voxel indices in the main image's array order, shape (N, 3).
    ``mask`` is a label/boolean volume on the main image's grid.
    """

    image: Volume
    references: list[Volume] = field(default_factory=list)
    points: np.ndarray | None = None
    mask: Volume | None = None


@dataclass
class Output:
    """One volume of a result. ``kind`` says how the viewer shows it and the CLI names it."""

    name: str
    volume: Volume
    kind: Literal["image", "labels", "heatmap"] = "image"
    description: str = ""
    # extra layer settings (contrast_limits, colormap, ...) the viewer may apply
    display: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    """What ``run`` returns: one or more output volumes plus a free-form record."""

    outputs: list[Output]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def primary(self) -> Output:
        return self.outputs[0]

    def by_kind(self, kind: str) -> list[Output]:
        return [o for o in self.outputs if o.kind == kind]


ProgressCallback = Callable[[int, int, str], None]


class RunContext:
    """What the engine gives a family for one run.

    ``progress(done, total, message)`` reports work; ``check_cancelled()`` raises
    :class:`Cancelled` once the user pressed Cancel (call it at least every second of
    work); ``rng`` is seeded; ``time_budget`` (seconds or None) bounds training;
    ``device`` is a string such as ``"cpu"`` or ``"cuda:0"``; ``overwrite`` says whether
    files the family writes itself (a saved model) may replace existing ones.
    """

    def __init__(
        self,
        *,
        device: str = "cpu",
        seed: int = 0,
        time_budget: float | None = None,
        cache_dir: Path | None = None,
        progress: ProgressCallback | None = None,
        cancel_event: threading.Event | None = None,
        logger: logging.Logger | None = None,
        amp: bool = True,
        metric: Callable[[dict[str, Any]], None] | None = None,
        overwrite: bool = False,
    ) -> None:
        self.device = device
        #: the user allowed files the run writes (e.g. ``save_model``) to replace existing ones
        self.overwrite = bool(overwrite)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.time_budget = time_budget
        self.cache_dir = cache_dir
        self._progress = progress
        self.cancel_event = cancel_event or threading.Event()
        self.logger = logger or logging.getLogger("napari_medgen.run")
        self.amp = amp
        self.started = time.perf_counter()
        self.events: list[dict[str, Any]] = []
        self._metric = metric

    # -- reporting ---------------------------------------------------------------
    def progress(self, done: int, total: int, message: str = "") -> None:
        """Report progress and honour a pending cancel."""
        self.check_cancelled()
        if self._progress is not None:
            self._progress(int(done), int(max(total, 1)), message)

    def log_metric(self, **values: Any) -> None:
        """Record a metric (e.g. a training loss) that the dock plots live."""
        event = dict(values, t=self.elapsed)
        self.events.append(event)
        if self._metric is not None:
            self._metric(event)

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled("run cancelled by the user")

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def budget_left(self) -> float | None:
        """Seconds left of the time budget (None: no budget)."""
        if self.time_budget is None:
            return None
        return self.time_budget - self.elapsed

    @property
    def torch_device(self):  # pragma: no cover - thin wrapper
        import torch

        return torch.device(self.device)


class ModelFamily:
    """Base class of a model family. Subclass it and set the class attributes.

    Required: ``id`` (``"package.name"``), ``task`` (:class:`Task`), ``display_name``,
    ``version`` and :meth:`run`. Everything else has a safe default.

    What the dock shows follows the declarations: ``wants_gpu`` (a GPU makes it much faster:
    the dock warns on CPU) or ``trains`` (it trains a model during ``run``) show the Device
    row; ``trains`` also shows the time budget; ``deterministic`` (the same inputs and
    parameters always give the same output) hides the seed. ``example`` marks a family for
    plugin authors to copy (the template's), not a real choice: the docks list it only when
    the user asks for example families (``MEDGEN_SHOW_EXAMPLES=1`` or the Model families
    panel); ``medgen families`` lists it always.
    """

    id: str = ""
    task: Task = Task.SUPERRES
    display_name: str = ""
    version: str = "0.0.0"
    description: str = ""
    citation: str = ""
    license: str = ""
    intended_use: str = RESEARCH_USE
    params: Sequence[Param] = ()
    inputs: Sequence[InputSpec] = ()
    #: the outputs ``run`` returns, in order; empty means one output (written to ``-o``)
    outputs: Sequence[OutputSpec] = ()
    #: a GPU makes it much faster (the dock shows the device and warns on CPU)
    wants_gpu: bool = False
    #: it trains a model during ``run`` (the dock shows the device and the time budget)
    trains: bool = False
    #: the same inputs and parameters give the same output (the dock hides the seed)
    deterministic: bool = False
    #: an example for plugin authors, not a real choice (the docks list it only when asked)
    example: bool = False
    #: higher sorts first in the docks' family list and is the task's default
    priority: int = 0

    def run(self, inputs: Inputs, params: dict[str, Any], ctx: RunContext) -> Result:
        raise NotImplementedError

    # -- helpers for the core ----------------------------------------------------
    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        names = ", ".join(p.name for p in self.params) or "none"
        raise ParamError(f"family {self.id!r} has no parameter {name} (it has: {names})")

    def input_spec(self, name: str) -> InputSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def resolve_params(self, given: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overlaid with ``given``, each validated; unknown names are refused."""
        given = dict(given or {})
        known = {p.name for p in self.params}
        unknown = sorted(set(given) - known)
        if unknown:
            names = ", ".join(sorted(known)) or "none"
            raise ParamError(f"family {self.id!r} has no parameter {', '.join(unknown)} (it has: {names})")
        out = self.defaults()
        for name, value in given.items():
            out[name] = self.param(name).validate(value)
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": Task(self.task).value,
            "display_name": self.display_name,
            "version": self.version,
            "description": self.description,
            "citation": self.citation,
            "license": self.license,
            "intended_use": self.intended_use,
            "wants_gpu": self.wants_gpu,
            "trains": bool(self.trains),
            "deterministic": bool(self.deterministic),
            "example": bool(self.example),
            "params": [p.to_dict() for p in self.params],
            "inputs": [
                {"name": s.name, "required": s.required, "same_grid": s.same_grid, "help": s.help}
                for s in self.inputs
            ],
            "outputs": [{"name": o.name, "kind": o.kind, "description": o.description} for o in self.outputs],
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.version}>"
