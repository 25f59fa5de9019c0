"""Safe weight storage: safetensors + a JSON model card with a sha256; never a raw pickle.

``save_weights(path, ...)`` writes ``<path>.safetensors`` and ``<path>.json``. The card
records the file's sha256, and the safetensors header records a hash of the card, so
``load_weights`` notices a modified weights file and an edited card alike. A user-given
PyTorch checkpoint (``.pt``/``.pth``/``.ckpt``) is only read by
:func:`load_foreign_checkpoint`, with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load as _st_load
from safetensors.torch import load_file as _st_load_file
from safetensors.torch import save as _st_save

from ..errors import WeightsError

__all__ = [
    "FORMAT_VERSION",
    "save_weights",
    "load_weights",
    "load_foreign_checkpoint",
    "cache_dir",
    "sha256_file",
    "weights_paths",
]

#: version of the card/safetensors layout written by :func:`save_weights`
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
#: fields the engine writes into every card; a caller's card cannot override them
_RESERVED = ("format_version", "created", "sha256", "file")
_CARD_HASH_KEY = "medgen_card_sha256"
_FOREIGN_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def cache_dir() -> Path:
    """Where families keep weights they trained: ``$MEDGEN_CACHE_DIR`` or ``~/.cache/napari-medgen``."""
    env = os.environ.get("MEDGEN_CACHE_DIR")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "napari-medgen"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _base(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".safetensors", ".json") else path


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, (Path, _dt.date)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"model card value of type {type(value).__name__} cannot be written as JSON")


def _card_hash(card: Mapping[str, Any]) -> str:
    """Hash of the card's content without its own sha256 field (which depends on the file)."""
    body = {k: v for k, v in card.items() if k != "sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def weights_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The two files of a saved model: ``(<path>.safetensors, <path>.json)``."""
    base = _base(path)
    return base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")


def save_weights(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    card: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``<path>.safetensors`` and its model card ``<path>.json``; return the safetensors path.

    ``card`` must name the ``family`` id and should carry version, params, training data,
    intended use and license; the engine adds ``sha256``, ``format_version``, ``created``.
    Both files are committed together through :mod:`napari_medgen.io.output` (atomic, never
    half a model); existing files are replaced only with ``overwrite=True``.
    """
    from ..io.output import OutputTransaction

    family = card.get("family")
    if not isinstance(family, str) or not family:
        raise WeightsError("the model card must name the family id (card['family'])")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        # a fresh contiguous CPU copy: safetensors refuses views and tensors that share memory
        tensors[str(key)] = value.detach().to("cpu").clone(memory_format=torch.contiguous_format)

    weights_path, card_path = weights_paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        full = json.loads(json.dumps(dict(card), default=_jsonable))  # what a reader will see
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"the model card cannot be saved as JSON: {exc}") from None
    for key in _RESERVED:
        full.pop(key, None)
    full.update(
        format_version=FORMAT_VERSION,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        file=weights_path.name,
    )
    metadata = {"format": "pt", "medgen_family": family, _CARD_HASH_KEY: _card_hash(full)}
    data = _st_save(tensors, metadata=metadata)
    full["sha256"] = hashlib.sha256(data).hexdigest()
    card_bytes = (json.dumps(full, indent=2, sort_keys=True) + "\n").encode("utf-8")
    with OutputTransaction(overwrite=overwrite, hint="allow overwriting to replace the saved model") as tx:
        tx.add(weights_path, lambda fh: fh.write(data), role="model file")
        tx.add(card_path, lambda fh: fh.write(card_bytes), role="model card")
        tx.commit()
    return weights_path


def _header_metadata(data: bytes) -> dict[str, str]:
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size].decode("utf-8"))
    return header.get("__metadata__") or {}


def load_weights(
    path: str | os.PathLike[str], expected_family: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read weights saved by :func:`save_weights` after checking the card, its checksum and family."""
    given = Path(path)
    if given.suffix in _FOREIGN_SUFFIXES and not given.is_file():
        raise WeightsError(f"weights file not found: {given}")
    if given.suffix in _FOREIGN_SUFFIXES:
        raise WeightsError(
            f"{given.name} is a PyTorch checkpoint, not napari-medgen weights; "
            "it can only be read with load_foreign_checkpoint (plain tensors only)"
        )
    weights_path, card_path = weights_paths(given)
    if not weights_path.is_file():
        raise WeightsError(f"weights file not found: {weights_path}")
    if not card_path.is_file():
        raise WeightsError(f"the model card {card_path.name} is missing; weights without a card are not loaded")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"the model card {card_path.name} is not valid JSON: {exc}") from None
    if not isinstance(card, dict):
        raise WeightsError(f"the model card {card_path.name} is not a JSON object")
    version = card.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise WeightsError(
            f"{card_path.name} has unknown format version {version!r} (this napari-medgen reads "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}); update napari-medgen or re-create the weights"
        )
    if expected_family is not None and card.get("family") != expected_family:
        raise WeightsError(
            f"{weights_path.name} holds weights for family {card.get('family')!r}, not {expected_family!r}"
        )

    data = weights_path.read_bytes()  # read once: the bytes checked are the bytes loaded
    if hashlib.sha256(data).hexdigest() != card.get("sha256"):
        raise WeightsError(
            f"checksum mismatch: the file {weights_path.name} was modified or corrupted "
            "(its sha256 differs from the model card)"
        )
    try:
        metadata = _header_metadata(data)
        state = _st_load(data)
    except Exception as exc:  # noqa: BLE001 - a valid checksum over an invalid file
        raise WeightsError(f"{weights_path.name} is not a readable safetensors file: {exc}") from None
    if metadata.get(_CARD_HASH_KEY) != _card_hash(card):
        raise WeightsError(
            f"the model card {card_path.name} was edited: it no longer matches the weights file it describes"
        )
    return state, card


def load_foreign_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a user-given ``.pt``/``.pth``/``.ckpt`` (or bare ``.safetensors``) state dict of plain tensors.

    ``torch.load`` runs with ``weights_only=True``: a file with code or arbitrary objects is
    refused, never executed. A checkpoint that wraps its weights (``state_dict``,
    ``model_state_dict`` or ``model`` key) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return dict(_st_load_file(str(path), device="cpu"))
        except Exception as exc:  # noqa: BLE001
            raise WeightsError(f"{path.name} is not a readable safetensors file: {exc}") from None
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:  # noqa: BLE001 - pickle errors, zip errors: all mean "not safe to read"
        raise WeightsError(
            f"{path.name} was not loaded: it contains code or objects that are not plain tensors "
            "(or is not a PyTorch checkpoint); only plain state dicts are accepted"
        ) from None
    state = _find_state_dict(obj)
    if state is None:
        raise WeightsError(f"{path.name} holds no state dict of tensors (found a {type(obj).__name__})")
    return state


def _find_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if not isinstance(obj, Mapping):
        return None
    if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return dict(obj)
    for key in ("state_dict", "model_state_dict", "model"):
        inner = obj.get(key)
        found = _find_state_dict(inner) if inner is not None else None
        if found is not None:
            return found
    return None
