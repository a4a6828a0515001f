"""Which endpoints an event goes to: the one rule that fan-out (`dispatcher`) and replay (`replay`) both apply."""

from __future__ import annotations

from typing import Protocol


class RoutedEvent(Protocol):
    @property
    def owner_id(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def endpoint_id(self) -> int | None: ...


class RoutedEndpoint(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def user_id(self) -> int: ...
    @property
    def events(self) -> list[str]: ...


def receives(endpoint: RoutedEndpoint, event: RoutedEvent) -> bool:
    """An endpoint gets its owner's events of the types it subscribes to; an event addressed to one endpoint
    (`webhook.test`) goes to that endpoint only, whatever it subscribes to. Owner-scoped (API.md section 9)."""
    if endpoint.user_id != event.owner_id:
        return False
    if event.endpoint_id is not None:
        return endpoint.id == event.endpoint_id
    return event.type in endpoint.events
