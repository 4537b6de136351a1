"""WebRtcEndpoint served by an aiortc RTCPeerConnection, forwarding encoded media.

What a peer sends is taken from its receiver before aiortc would decode it
(`mediaserver.forwarding`) and goes to the connected sinks as encoded frames; what we send
is packed by aiortc from those frames (`mediaserver.outbound`). Keyframe requests from a
viewer, or from a sink that starts or lost frames, reach the publisher as RTCP PLI.

Local candidates go inside the SDP (as KMS does when gatherCandidates precedes the offer)
and are announced as events (`mediaserver.ice`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import SessionDescription

from kurento_ctl.jsonrpc import ErrorCode
from mediaserver.elements import Element, KmsError, MediaPipelineImpl, Method, require
from mediaserver.forwarding import ForwardingReceiver, hook_sender, prefer_vp8
from mediaserver.ice import IceCandidates
from mediaserver.outbound import OutboundTrack
from mediaserver.tracks import Counters, Fanout, FlowMonitor, counting_probe

if TYPE_CHECKING:
    from mediaserver.core import MediaServer

__all__ = ["WebRtcEndpointImpl"]

log = logging.getLogger(__name__)

ICE_STATES = {"new": "DISCONNECTED", "checking": "CONNECTING", "completed": "READY",
              "failed": "FAILED", "closed": "DISCONNECTED"}


class WebRtcEndpointImpl(IceCandidates, Element):
    type_name = "WebRtcEndpoint"
    hierarchy = ("kurento.BaseRtpEndpoint", "kurento.SdpEndpoint", "kurento.SessionEndpoint",
                 "kurento.Endpoint", "kurento.MediaElement", "kurento.MediaObject")
    events = Element.events | frozenset({
        "IceCandidateFound", "IceGatheringDone", "IceComponentStateChanged",
        "NewCandidatePairSelected", "MediaStateChanged", "ConnectionStateChanged",
        "MediaSessionStarted", "MediaSessionTerminated", "DataChannelOpened",
        "DataChannelClosed", "DtlsConnectionStateChange", "MediaTranscodingStateChanged",
    })

    def __init__(self, server: MediaServer, pipeline: MediaPipelineImpl,
                 params: dict[str, Any]) -> None:
        super().__init__(server, pipeline)
        self.recvonly = bool(params.get("recvonly", False))
        self.sendonly = bool(params.get("sendonly", False))
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.negotiated = False
        self.offer_generated = False
        self.gather_requested = False
        self.gathered = False
        self.properties: dict[str, Any] = {"stunServerAddress": "", "stunServerPort": 3478,
                                           "turnUrl": "", "externalIPv4": "",
                                           "externalIPv6": "", "networkInterfaces": ""}
        self._pending_candidates: list[dict[str, Any]] = []
        self.ignored_candidates = 0
        self._fanouts: dict[str, Fanout] = {}
        self._receivers: dict[str, ForwardingReceiver] = {}
        self._outbound: dict[str, OutboundTrack] = {}
        self._rtp_seen: dict[str, tuple[int, int]] = {}
        self._in_flow = {k: FlowMonitor(self.flow_callback("In", k), name=f"{self.id} in {k}",
                                        probe=counting_probe(self._out_counters(k)))
                         for k in ("audio", "video")}
        self._out_flow = {k: FlowMonitor(self.flow_callback("Out", k), probe=self._rtp_probe(k),
                                         name=f"{self.id} out {k}")
                          for k in ("audio", "video")}
        self._ice_state = "DISCONNECTED"
        self._media_connected = False
        self.pc.on("track", self._on_track)
        self.pc.on("iceconnectionstatechange", self._on_ice_state)
        self.pc.on("connectionstatechange", self._on_connection_state)

    # -- media ------------------------------------------------------------------

    def output(self, kind: str) -> Fanout | None:
        return self._fanouts.get(kind)

    def on_source(self, kind: str, fanout: Fanout | None) -> None:
        track = self._outbound.get(kind)
        if track is not None:
            track.attach(fanout, connected=kind in self.sources)

    def _on_track(self, track: MediaStreamTrack) -> None:
        kind = track.kind
        if kind not in ("audio", "video") or kind in self._fanouts:
            return
        receiver = next(t.receiver for t in self.pc.getTransceivers()
                        if t.receiver.track is track)
        fanout = Fanout(kind, self._out_flow[kind].frame,
                        lambda: forwarding.request_keyframe())
        forwarding = ForwardingReceiver(receiver, fanout.push)
        fanout.follow(track)
        self._fanouts[kind], self._receivers[kind] = fanout, forwarding
        self.output_changed(kind)

    def _out_counters(self, kind: str) -> Any:
        def counters() -> Counters:
            track = self._outbound.get(kind)
            return track.totals() if track is not None else Counters()
        return counters

    def _rtp_probe(self, kind: str) -> Any:
        """Packets the publisher sent that never arrived, since the last probe."""
        async def probe() -> tuple[int, int]:
            forwarding = self._receivers.get(kind)
            if forwarding is None:
                return 0, 0
            received, lost = forwarding.rtp_counts()
            fanout = self._fanouts.get(kind)
            if fanout is not None:
                fanout.counters.lost = lost
            last_received, last_lost = self._rtp_seen.get(kind, (0, 0))
            self._rtp_seen[kind] = (received, lost)
            missing = max(lost - last_lost, 0)
            return missing, missing + max(received - last_received, 0)
        return probe

    def flowing_in(self, kind: str) -> bool:
        return self._in_flow[kind].flowing

    def flowing_out(self, kind: str) -> bool:
        return self._out_flow[kind].flowing

    def _on_ice_state(self) -> None:
        state = ICE_STATES.get(self.pc.iceConnectionState, "CONNECTING")
        if self.pc.iceConnectionState == "completed":
            self._keep_consent()
            self.emit("IceComponentStateChanged", state="CONNECTED", streamId=1, componentId=1)
            self._emit_selected_pair()
        if state != self._ice_state:
            self._ice_state = state
            self.emit("IceComponentStateChanged", state=state, streamId=1, componentId=1)

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and not self._media_connected:
            self._media_connected = True
            self.emit("ConnectionStateChanged", oldState="DISCONNECTED", newState="CONNECTED")
            self.emit("MediaStateChanged", oldState="DISCONNECTED", newState="CONNECTED")
        elif state in ("failed", "closed") and self._media_connected:
            self._media_connected = False
            self.emit("ConnectionStateChanged", oldState="CONNECTED", newState="DISCONNECTED")
            self.emit("MediaStateChanged", oldState="CONNECTED", newState="DISCONNECTED")

    # -- methods ----------------------------------------------------------------

    def methods(self) -> dict[str, Method]:
        methods = super().methods()
        methods.update({
            "processOffer": Method(self._process_offer, ("offer",)),
            "processAnswer": Method(self._process_answer, ("answer",)),
            "generateOffer": Method(self._generate_offer, (), ("options",)),
            "gatherCandidates": Method(self._gather_candidates),
            "addIceCandidate": Method(self._add_ice_candidate, ("candidate",)),
            "getLocalSessionDescriptor": Method(self._local_sdp),
            "getRemoteSessionDescriptor": Method(self._remote_sdp),
            "getICECandidatePairs": Method(self._pairs),
            "getConnectionState": Method(self._connection_state),
            "getMediaState": Method(self._connection_state),
        })
        for prop in self.properties:
            cap = prop[0].upper() + prop[1:]
            methods["get" + cap] = Method(self._getter(prop))
            methods["set" + cap] = Method(self._setter(prop), (prop,))
        return methods

    def _getter(self, prop: str) -> Any:
        async def get(params: dict[str, Any]) -> Any:
            return self.properties[prop]
        return get

    def _setter(self, prop: str) -> Any:
        async def set_(params: dict[str, Any]) -> None:
            self.properties[prop] = params[prop]
        return set_

    def _add_outbound(self) -> None:
        for transceiver in self.pc.getTransceivers():
            kind = transceiver.kind
            if kind not in ("audio", "video") or kind in self._outbound \
                    or "send" not in transceiver.direction:
                continue
            track = OutboundTrack(kind, self._in_flow[kind].frame, name=f"{self.id} {kind}",
                                  on_transcoding=self._transcoding_callback(kind))
            self._outbound[kind] = track
            transceiver.sender.replaceTrack(track)
            hook_sender(transceiver.sender, track.request_keyframe)
            source = self.sources.get(kind)
            track.attach(source.output(kind) if source is not None else None,
                         connected=source is not None)

    def _transcoding_callback(self, kind: str) -> Any:
        def changed(transcoding: bool) -> None:
            self.emit("MediaTranscodingStateChanged",
                      state="TRANSCODING" if transcoding else "NOT_TRANSCODING",
                      binName=f"{self.id}/{kind}", mediaType=kind.upper())
        return changed

    def _learn_send_codecs(self) -> None:
        """Each outbound track learns the codec its sender negotiated (the first of its
        m-line in the local description, which is what aiortc sends)."""
        for media in SessionDescription.parse(self.pc.localDescription.sdp).media:
            track = self._outbound.get(media.kind)
            if track is not None and media.rtp.codecs:
                track.send_codec = str(media.rtp.codecs[0].mimeType).lower()

    async def _process_offer(self, params: dict[str, Any]) -> str:
        offer = require(params, "offer", str, "a string")
        if self.negotiated or self.offer_generated:
            raise KmsError(ErrorCode.SDP_END_POINT_ALREADY_NEGOTIATED,
                           "Endpoint already negotiated")
        if not offer.strip():
            raise KmsError(ErrorCode.SDP_PARSE_ERROR, "Empty offer not valid")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(self._strict(offer), "offer"))
        except Exception as exc:  # aiortc raises ValueError and others for bad SDP
            raise KmsError(ErrorCode.SDP_PARSE_ERROR, f"Error parsing SDP: {exc}") from None
        self.negotiated = True
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video":
                prefer_vp8(transceiver)
        if not self.recvonly:
            for transceiver in self.pc.getTransceivers():
                # aiortc keeps the offer's direction as seen from our side.
                ours = transceiver._offerDirection or "sendrecv"
                if "send" in ours:
                    transceiver.direction = "sendrecv" if "recv" in ours else "sendonly"
            self._add_outbound()
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        self._learn_send_codecs()
        await self._flush_candidates()
        self.emit("MediaSessionStarted")
        self._announce_candidates()
        return str(self.pc.localDescription.sdp)

    async def _generate_offer(self, params: dict[str, Any]) -> str:
        if self.negotiated or self.offer_generated:
            raise KmsError(ErrorCode.SDP_END_POINT_ALREADY_NEGOTIATED,
                           "Endpoint already negotiated")
        options = params.get("options") or {}
        for kind, key in (("audio", "offerToReceiveAudio"), ("video", "offerToReceiveVideo")):
            recv = bool(options.get(key, True)) and not self.sendonly
            send = not self.recvonly
            if recv or send:
                direction = "sendrecv" if recv and send else ("recvonly" if recv else "sendonly")
                self.pc.addTransceiver(kind, direction=direction)
        if not self.recvonly:
            self._add_outbound()
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        self.offer_generated = True
        self._announce_candidates()
        return str(self.pc.localDescription.sdp)

    async def _process_answer(self, params: dict[str, Any]) -> str:
        answer = require(params, "answer", str, "a string")
        if not self.offer_generated:
            raise KmsError(ErrorCode.SDP_END_POINT_NOT_OFFER_GENERATED,
                           "Offer not generated. It is not possible to process an answer.")
        if self.negotiated:
            raise KmsError(ErrorCode.SDP_END_POINT_ANSWER_ALREADY_PROCCESED,
                           "Sdp Answer already processed")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(self._strict(answer),
                                                                     "answer"))
        except Exception as exc:
            raise KmsError(ErrorCode.SDP_PARSE_ERROR, f"Error parsing SDP: {exc}") from None
        self.negotiated = True
        self._learn_send_codecs()
        await self._flush_candidates()
        self.emit("MediaSessionStarted")
        return str(self.pc.localDescription.sdp)

    async def _local_sdp(self, params: dict[str, Any]) -> str:
        if self.pc.localDescription is None:
            raise KmsError(ErrorCode.SDP_END_POINT_NO_LOCAL_SDP_ERROR, "No local SDP")
        return str(self.pc.localDescription.sdp)

    async def _remote_sdp(self, params: dict[str, Any]) -> str:
        if self.pc.remoteDescription is None:
            raise KmsError(ErrorCode.SDP_END_POINT_NO_REMOTE_SDP_ERROR, "No remote SDP")
        return str(self.pc.remoteDescription.sdp)

    async def _pairs(self, params: dict[str, Any]) -> list[Any]:
        return []

    async def _connection_state(self, params: dict[str, Any]) -> str:
        return "CONNECTED" if self._media_connected else "DISCONNECTED"

    async def _stats(self, params: dict[str, Any]) -> dict[str, Any]:
        report = await self.pc.getStats()
        out: dict[str, Any] = {}
        for key, stat in report.items():
            entry = {k: v for k, v in vars(stat).items()
                     if isinstance(v, (int, float, str, bool))}
            entry["timestampMillis"] = int(stat.timestamp.timestamp() * 1000)
            out[key] = entry
        for kind in ("audio", "video"):
            fanout, track = self._fanouts.get(kind), self._outbound.get(kind)
            if fanout is not None:
                out[f"media-counters_received_{kind}"] = fanout.counters.as_stats(kind)
            if track is not None:
                out[f"media-counters_sent_{kind}"] = track.totals().as_stats(kind)
        return out

    async def release(self) -> None:
        for monitor in (*self._in_flow.values(), *self._out_flow.values()):
            monitor.close()
        for track in self._outbound.values():
            track.stop()
        for forwarding in self._receivers.values():
            forwarding.close()
        for fanout in self._fanouts.values():
            await fanout.close()
        await super().release()
        await asyncio.shield(self.pc.close())
