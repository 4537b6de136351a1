// Reading getStats() the same way in Chromium, Firefox and Safari.

// The candidate pair carrying media: Chromium and Safari name it on the transport, Firefox
// marks the pair itself `selected`; the nominated, succeeded pair is the last resort.
export function selectedPair(stats) {
  let pair = null;
  stats.forEach((s) => {
    if (!pair && s.type === "transport" && s.selectedCandidatePairId) {
      pair = stats.get(s.selectedCandidatePairId) || null;
    }
  });
  if (!pair) stats.forEach((s) => { if (!pair && s.type === "candidate-pair" && s.selected) pair = s; });
  if (!pair) {
    stats.forEach((s) => {
      if (!pair && s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
    });
  }
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId) || {};
  const remote = stats.get(pair.remoteCandidateId) || {};
  return {
    local: local.candidateType || null, remote: remote.candidateType || null,
    protocol: local.protocol || null, relayProtocol: local.relayProtocol || null,
    rtt: pair.currentRoundTripTime !== undefined ? pair.currentRoundTripTime : null,
  };
}

// Totals of one connection: bytes in and out, packets received and lost, round trip (s),
// the loudest inbound audio level, the number of decoded video frames and the inbound
// audio energy so far.
export function totals(stats) {
  const t = { bytesIn: 0, bytesOut: 0, received: 0, lost: 0, rtt: null, level: 0, frames: 0,
              energy: 0 };
  stats.forEach((s) => {
    if (s.type === "inbound-rtp") {
      t.bytesIn += s.bytesReceived || 0;
      t.received += s.packetsReceived || 0;
      t.lost += Math.max(0, s.packetsLost || 0);
      if (s.kind === "audio" && typeof s.audioLevel === "number") t.level = Math.max(t.level, s.audioLevel);
      // Grows with every audible sample: a muted sender's silence adds nothing.
      if (s.kind === "audio" && typeof s.totalAudioEnergy === "number") t.energy += s.totalAudioEnergy;
      if (s.kind === "video") t.frames += s.framesDecoded || 0;
    } else if (s.type === "outbound-rtp") {
      t.bytesOut += s.bytesSent || 0;
    } else if (s.type === "remote-inbound-rtp" && typeof s.roundTripTime === "number") {
      // Firefox has no currentRoundTripTime on pairs; the receiver's report has it.
      t.rtt = s.roundTripTime;
    } else if (s.type === "track" && s.kind === "audio" && typeof s.audioLevel === "number"
               && s.remoteSource) {
      t.level = Math.max(t.level, s.audioLevel);
    }
  });
  const pair = selectedPair(stats);
  if (pair && pair.rtt !== null) t.rtt = pair.rtt;
  return t;
}
