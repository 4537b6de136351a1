"""`Transaction`: many Kurento operations in one round trip (PROTOCOL.md 1.3.2).

    tx = Transaction(client)
    pipeline = tx.create_pipeline()
    endpoint = tx.create_webrtc_endpoint(pipeline)
    answer = tx.process_offer(endpoint, offer)
    await tx.commit()
    answer.value                       # the SDP answer; endpoint.id is now its real id

An object created in a transaction is known as `newref:<i>` until `commit()` returns, and
later ops of the same transaction may use it: KMS puts the real id in its place. Ops run in
order and stop at the first failure; `commit()` raises that op's typed error (an `SdpError`
for a refused offer), the ops after it end as `OperationNotRun`, and what ran stays done.

Subscriptions may name objects of the same transaction (KMS resolves `newref:` in a
`subscribe` op too). Their events can arrive before the commit reply tells us the real id,
so while the commit is in flight the client keeps events nobody listens to, and delivers
them, in order, once the handlers are registered under the real ids.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kurento_ctl.client import KurentoClient
from kurento_ctl.errors import (
    KurentoError,
    OperationNotRun,
    ProtocolViolation,
    RpcError,
    rpc_error,
)
from kurento_ctl.events import KurentoEvent
from kurento_ctl.objects import (
    MediaObject,
    MediaPipeline,
    MediaProfile,
    MediaType,
    RecorderEndpoint,
    Subscription,
    WebRtcEndpoint,
    connect_params,
    ice_candidate,
    recorder_endpoint_params,
    typed_handler,
    webrtc_endpoint_params,
)

__all__ = ["Pending", "Transaction"]

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=MediaObject)
E = TypeVar("E", bound=KurentoEvent)


class Pending(Generic[T]):
    """The outcome of one op, known once its transaction was committed."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._ran = False
        self._value: Any = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        """The op ran and succeeded."""
        return self._ran and self._error is None

    @property
    def value(self) -> T:
        if self._error is not None:
            raise self._error
        if not self._ran:
            raise KurentoError(f"{self.what}: the transaction was not committed")
        return self._value  # type: ignore[no-any-return]

    def _resolve(self, value: Any) -> None:
        self._ran, self._value = True, value

    def _fail(self, error: BaseException) -> None:
        self._ran, self._error = True, error


@dataclass
class _Op:
    method: str
    params: dict[str, Any]
    pending: Pending[Any]
    on_result: Callable[[Any], Any]
    on_failure: Callable[[], None] | None = None


class Transaction:
    def __init__(self, client: KurentoClient) -> None:
        self.client = client
        self._ops: list[_Op] = []
        self._created: set[int] = set()
        self._committed = False
        self._hold = False

    def __len__(self) -> int:
        return len(self._ops)

    # ---------------------------------------------------------------- building

    def _ref(self, obj: MediaObject) -> str:
        if obj.id.startswith("newref:") and id(obj) not in self._created:
            raise ValueError(f"{obj!r} belongs to another, uncommitted transaction")
        return obj.id

    def _arg(self, value: Any) -> Any:
        return self._ref(value) if isinstance(value, MediaObject) else value

    def _add(self, method: str, params: dict[str, Any], what: str,
             on_result: Callable[[Any], Any],
             on_failure: Callable[[], None] | None = None) -> Pending[Any]:
        if self._committed:
            raise RuntimeError("this transaction was already committed")
        pending: Pending[Any] = Pending(f"op {len(self._ops)} {what}")
        self._ops.append(_Op(method, params, pending, on_result, on_failure))
        return pending

    def create(self, cls: type[M], **constructor_params: Any) -> M:
        """A new `cls`; media objects among the params are passed by reference."""
        obj = cls(self.client, f"newref:{len(self._ops)}")
        self._created.add(id(obj))

        def created(result: Any) -> str:
            value = result.get("value") if isinstance(result, dict) else None
            if not isinstance(value, str):
                raise ProtocolViolation(f"create {cls.kurento_type} answered without an id")
            obj.id = value
            return obj.id

        self._add("create", {
            "type": cls.kurento_type,
            "constructorParams": {k: self._arg(v) for k, v in constructor_params.items()},
            "properties": {},
        }, f"create {cls.kurento_type}", created)
        return obj

    def invoke(self, obj: MediaObject, operation: str, **params: Any) -> Pending[Any]:
        body: dict[str, Any] = {"object": self._ref(obj), "operation": operation}
        if params:
            body["operationParams"] = {k: self._arg(v) for k, v in params.items()}
        return self._add("invoke", body, f"invoke {operation}",
                         lambda r: r.get("value") if isinstance(r, dict) else None)

    def subscribe(self, obj: MediaObject, event_type: type[E] | str,
                  handler: Callable[[Any], None]) -> Pending[Subscription]:
        """`handler(event)` for each event of that type, including the events raised by
        later ops of this same transaction (and before its reply arrives)."""
        ref = self._ref(obj)
        name = event_type if isinstance(event_type, str) else event_type.__name__
        on_notification = typed_handler(handler)
        if ref.startswith("newref:"):
            self._hold = True

            def subscribed(r: Any) -> Subscription:
                # The create op ran before this one, so obj.id is the real id by now.
                self.client.add_handler(obj.id, name, on_notification)
                return Subscription(obj, name, str(r.get("value")), on_notification)

            return self._add("subscribe", {"object": ref, "type": name}, f"subscribe {name}",
                             subscribed)
        self.client.add_handler(obj.id, name, on_notification)
        return self._add(
            "subscribe", {"object": obj.id, "type": name}, f"subscribe {name}",
            lambda r: Subscription(obj, name, str(r.get("value")), on_notification),
            lambda: self.client.remove_handler(obj.id, name, on_notification))

    def add_tag(self, obj: MediaObject, key: str, value: str) -> Pending[None]:
        """Kurento's `MediaObject.addTag`; works on `newref:` objects of this transaction."""
        return self.invoke(obj, "addTag", key=key, value=value)

    def release(self, obj: MediaObject) -> Pending[None]:
        def released(_: Any) -> None:
            self.client.drop_object(obj.id)

        return self._add("release", {"object": self._ref(obj)}, "release", released)

    # ---------------------------------------------------------------- typed shortcuts

    def create_pipeline(self) -> MediaPipeline:
        return self.create(MediaPipeline)

    def create_webrtc_endpoint(self, pipeline: MediaPipeline, *, recvonly: bool = False,
                               sendonly: bool = False) -> WebRtcEndpoint:
        return self.create(WebRtcEndpoint, mediaPipeline=pipeline,
                           **webrtc_endpoint_params(recvonly=recvonly, sendonly=sendonly))

    def create_recorder_endpoint(self, pipeline: MediaPipeline, uri: str, *,
                                 media_profile: MediaProfile = "WEBM",
                                 stop_on_end_of_stream: bool = False) -> RecorderEndpoint:
        return self.create(RecorderEndpoint, mediaPipeline=pipeline, **recorder_endpoint_params(
            uri, media_profile=media_profile, stop_on_end_of_stream=stop_on_end_of_stream))

    def connect(self, source: MediaObject, sink: MediaObject,
                media_type: MediaType | None = None) -> Pending[None]:
        return self.invoke(source, "connect", **connect_params(sink, media_type))

    def process_offer(self, endpoint: WebRtcEndpoint, offer: str) -> Pending[str]:
        return self.invoke(endpoint, "processOffer", offer=offer)

    def gather_candidates(self, endpoint: WebRtcEndpoint) -> Pending[None]:
        return self.invoke(endpoint, "gatherCandidates")

    def add_ice_candidate(self, endpoint: WebRtcEndpoint, candidate: str, sdp_mid: str,
                          sdp_mline_index: int) -> Pending[None]:
        return self.invoke(endpoint, "addIceCandidate",
                           candidate=ice_candidate(candidate, sdp_mid, sdp_mline_index))

    def record(self, recorder: RecorderEndpoint) -> Pending[None]:
        return self.invoke(recorder, "record")

    # ---------------------------------------------------------------- commit

    async def commit(self, *, timeout: float | None = None) -> None:
        """Sends every op in one `transaction` request; raises the first failed op's error."""
        if self._committed:
            raise RuntimeError("this transaction was already committed")
        self._committed = True
        if not self._ops:
            return
        ops = self._ops
        token = self.client.hold_unrouted_events() if self._hold else None
        try:
            await self._run(ops, timeout)
        finally:
            if token is not None:
                self.client.release_unrouted_events(token)

    async def _run(self, ops: list[_Op], timeout: float | None) -> None:
        try:
            replies = await self.client.transaction([(op.method, op.params) for op in ops],
                                                    timeout=timeout)
        except BaseException as exc:
            # A timeout or a lost socket says nothing about what ran: KMS may have run every
            # op. Created objects keep their newref ids; the caller's tags and the orphan
            # sweep are what find them again.
            for op in ops:
                self._failed(op, exc)
            raise
        first: RpcError | None = None
        for op, reply in zip(ops, replies, strict=True):
            if reply is None:
                self._failed(op, OperationNotRun(f"{op.pending.what}: not run, an earlier op "
                                                 "failed"))
            elif reply.error is not None:
                error = rpc_error(reply.error)
                error.operation = op.pending.what
                self._failed(op, error)
                first = first or error
            else:
                op.pending._resolve(op.on_result(reply.result))
        if first is not None:
            log.info("! transaction of %d ops failed at %s: %s", len(ops), first.operation,
                     first.message)
            raise first

    @staticmethod
    def _failed(op: _Op, error: BaseException) -> None:
        op.pending._fail(error)
        if op.on_failure is not None:
            op.on_failure()
