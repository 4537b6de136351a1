"""`Handlers`: who listens to which event of which media object, indexed by the pipeline
the object is in, so releasing a pipeline drops its listeners without scanning every
call's (a mass teardown was quadratic: bench.watchdog --profile)."""

from __future__ import annotations

from collections.abc import Callable

from kurento_ctl.jsonrpc import Notification

__all__ = ["EventHandler", "Handlers"]

EventHandler = Callable[[Notification], None]
Key = tuple[str, str]  # (object id, event type)


def _root(object_id: str) -> str:
    """The pipeline an object is in: KMS names children `<pipeline>/<child>`."""
    return object_id.split("/", 1)[0]


class Handlers:
    def __init__(self) -> None:
        self._by_key: dict[Key, list[EventHandler]] = {}
        self._by_root: dict[str, set[Key]] = {}

    def get(self, object_id: str, event_type: str) -> list[EventHandler] | None:
        return self._by_key.get((object_id, event_type))

    def add(self, object_id: str, event_type: str, handler: EventHandler) -> None:
        self._by_key.setdefault((object_id, event_type), []).append(handler)
        self._by_root.setdefault(_root(object_id), set()).add((object_id, event_type))

    def remove(self, object_id: str, event_type: str, handler: EventHandler) -> None:
        handlers = self._by_key.get((object_id, event_type), [])
        if handler in handlers:
            handlers.remove(handler)
        if not handlers:
            self._forget((object_id, event_type))

    def drop_object(self, object_id: str) -> None:
        """Every handler of an object and of its children."""
        for key in [k for k in self._by_root.get(_root(object_id), ())
                    if k[0] == object_id or k[0].startswith(object_id + "/")]:
            self._forget(key)

    def _forget(self, key: Key) -> None:
        self._by_key.pop(key, None)
        keys = self._by_root.get(_root(key[0]))
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_root[_root(key[0])]

    def clear(self) -> None:
        self._by_key.clear()
        self._by_root.clear()

    def count(self) -> int:
        return sum(len(v) for v in self._by_key.values())
