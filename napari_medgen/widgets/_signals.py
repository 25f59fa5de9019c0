"""Cross-dock events: the families panel's Reload refreshes every task dock."""

from __future__ import annotations

from psygnal import Signal


class _RegistryEvents:
    reloaded = Signal()


registry_events = _RegistryEvents()
