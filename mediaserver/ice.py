"""ICE for a WebRtcEndpoint, as KMS handles it: candidates announced as events,
trickled ones applied (or, in strict mode, the ones KMS could not use ignored), and the
selected pair reported. aiortc does not trickle: `setLocalDescription` gathers every local
candidate, which we announce once `gatherCandidates` was invoked."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from typing import TYPE_CHECKING, Any

from aiortc import RTCPeerConnection
from aiortc.sdp import candidate_from_sdp, candidate_to_sdp

from kurento_ctl.jsonrpc import ErrorCode
from mediaserver.elements import KmsError

if TYPE_CHECKING:
    from mediaserver.core import MediaServer

__all__ = ["IceCandidates", "unusable_for_kurento"]

log = logging.getLogger(__name__)


def unusable_for_kurento(address: str) -> bool:
    """What KMS cannot use: mDNS names and link-local IPv6 (no scope in ICE)."""
    if address.lower().endswith(".local"):
        return True
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    return ip.version == 6 and ip.is_link_local


class IceCandidates:
    """The ICE half of a WebRtcEndpoint (a mixin: the endpoint owns the state)."""

    if TYPE_CHECKING:
        pc: RTCPeerConnection
        server: MediaServer
        id: str
        negotiated: bool
        gather_requested: bool
        gathered: bool
        ignored_candidates: int
        _pending_candidates: list[dict[str, Any]]

        def emit(self, event_type: str, **fields: Any) -> None: ...

    def _keep_consent(self) -> None:
        """Stops aioice's consent freshness checks (KMS's libnice agent runs none): six
        unanswered ones, 0.5 s each, close the connection, and against Chromium on a busy
        machine they all went unanswered, so both browsers' uploads died ~34 s into the
        call. Lost media is told by the flow events instead."""
        for transceiver in self.pc.getTransceivers():
            connection = transceiver.receiver.transport.transport._connection
            task = connection._query_consent_task  # aioice keeps no public switch
            if task is not None:
                task.cancel()
                connection._query_consent_task = None

    def _emit_selected_pair(self) -> None:
        for transceiver in self.pc.getTransceivers()[:1]:
            transport = transceiver.receiver.transport.transport
            pair = transport._connection._nominated.get(1)  # aioice keeps no public accessor
            if pair is None:
                continue
            self.emit("NewCandidatePairSelected", candidatePair={
                "__module__": "kurento", "__type__": "IceCandidatePair", "componentId": 1,
                "localCandidate": "candidate:" + pair.local_candidate.to_sdp(),
                "remoteCandidate": "candidate:" + pair.remote_candidate.to_sdp(),
                "streamId": "1"})

    def _strict(self, sdp: str) -> str:
        """In strict mode, the SDP without the `a=candidate` lines KMS could not use: its
        candidates from SDP take the same path as trickled ones (inferred from kms-elements)."""
        if not self.server.strict_candidates:
            return sdp
        kept = []
        for line in sdp.splitlines(keepends=True):
            if line.startswith("a=candidate:"):
                try:
                    address = candidate_from_sdp(line[len("a=candidate:"):].strip()).ip
                except (ValueError, IndexError):
                    address = ""
                if not address or unusable_for_kurento(address):
                    log.info("= strict: candidate %s in SDP ignored", address or "(unparsable)",
                             extra={"object": self.id})
                    self.ignored_candidates += 1
                    continue
            kept.append(line)
        return "".join(kept)

    async def _gather_candidates(self, params: dict[str, Any]) -> None:
        self.gather_requested = True
        self._announce_candidates()

    def _announce_candidates(self) -> None:
        if not self.gather_requested or self.gathered or self.pc.localDescription is None:
            return
        self.gathered = True
        self.emit("IceComponentStateChanged", state="GATHERING", streamId=1, componentId=1)
        for index, transceiver in enumerate(self.pc.getTransceivers()):
            gatherer = transceiver.sender.transport.transport.iceGatherer
            for candidate in gatherer.getLocalCandidates():
                self.emit("IceCandidateFound", candidate={
                    "__module__": "kurento", "__type__": "IceCandidate",
                    "candidate": "candidate:" + candidate_to_sdp(candidate),
                    "sdpMid": transceiver.mid or str(index), "sdpMLineIndex": index})
            if self.pc.sctp is None and index == 0:
                # BUNDLE: one transport carries every m-line; announce its candidates once.
                break
        self.emit("IceGatheringDone")

    async def _add_ice_candidate(self, params: dict[str, Any]) -> None:
        candidate = params.get("candidate")
        if not isinstance(candidate, dict):
            raise KmsError(ErrorCode.MARSHALL_ERROR,
                           "'candidate' parameter should be a IceCandidate")
        for field_name, kind in (("candidate", str), ("sdpMid", str), ("sdpMLineIndex", int)):
            if not isinstance(candidate.get(field_name), kind):
                raise KmsError(ErrorCode.MARSHALL_ERROR,
                               f"'{field_name}' parameter should be a "
                               f"{'string' if kind is str else 'integer'}")
        if not self.negotiated:
            self._pending_candidates.append(candidate)
            return
        await self._apply_candidate(candidate)

    async def _flush_candidates(self) -> None:
        pending, self._pending_candidates = self._pending_candidates, []
        for candidate in pending:
            await self._apply_candidate(candidate)

    async def _apply_candidate(self, candidate: dict[str, Any]) -> None:
        line = str(candidate["candidate"]).strip()
        if not line:
            return  # end-of-candidates: KMS ignores it
        if line.startswith("candidate:"):
            line = line[len("candidate:"):]
        try:
            parsed = candidate_from_sdp(line)
        except (ValueError, IndexError):
            log.info("= unparsable candidate ignored", extra={"object": self.id})
            return
        if self.server.strict_candidates and unusable_for_kurento(parsed.ip):
            # KMS >= 6.13.2 silently ignores what it cannot resolve or scope.
            log.info("= strict: candidate %s ignored", parsed.ip, extra={"object": self.id})
            self.ignored_candidates += 1
            return
        parsed.sdpMid = candidate["sdpMid"]
        parsed.sdpMLineIndex = candidate["sdpMLineIndex"]
        with contextlib.suppress(Exception):
            await self.pc.addIceCandidate(parsed)
