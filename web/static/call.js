// The call page: pre-call check, then one publishing RTCPeerConnection and one receiving
// RTCPeerConnection per other participant, driven over the telemed.v1 WebSocket protocol.
const T = window.TELEMED_STRINGS;
const app = document.getElementById("app");
const token = app.dataset.token;
const role = app.dataset.role;
const $ = (id) => document.getElementById(id);

const state = {
  ws: null, nextId: 1, pending: new Map(), local: null, iceServers: [],
  pcs: new Map(), tiles: new Map(), reported: new Set(), me: null, over: false,
  pendingCandidates: new Map(), published: false,
};

// ---------------------------------------------------------------- pre-call check

function explain(err) {
  if (!navigator.mediaDevices || !window.isSecureContext) return T.err_insecure;
  switch (err && err.name) {
    case "NotAllowedError": case "SecurityError": return T.err_permission;
    case "NotFoundError": case "OverconstrainedError": return T.err_no_device;
    case "NotReadableError": case "AbortError": return T.err_busy;
    default: return `${T.err_generic} ${err && err.message ? err.message : err}`;
  }
}

function showPrecheckError(text) {
  const el = $("precheck-error");
  el.textContent = text;
  el.hidden = false;
}

async function openDevices() {
  const camera = $("camera-select").value;
  const mic = $("mic-select").value;
  const constraints = {
    audio: mic ? { deviceId: { exact: mic } } : true,
    video: camera ? { deviceId: { exact: camera }, width: { ideal: 640 }, height: { ideal: 480 } }
                  : { width: { ideal: 640 }, height: { ideal: 480 } },
  };
  if (state.local) state.local.getTracks().forEach((t) => t.stop());
  state.local = await navigator.mediaDevices.getUserMedia(constraints);
  $("preview").srcObject = state.local;
  $("local").srcObject = state.local;
  meter(state.local);
}

async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [kind, select] of [["videoinput", "camera-select"], ["audioinput", "mic-select"]]) {
    const el = $(select);
    const current = el.value;
    el.textContent = "";
    devices.filter((d) => d.kind === kind).forEach((d, i) => {
      const opt = document.createElement("option");
      opt.value = d.deviceId;
      opt.textContent = d.label || `${kind} ${i + 1}`;
      el.appendChild(opt);
    });
    if (current) el.value = current;
  }
}

let meterContext = null;
function meter(stream) {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx || stream.getAudioTracks().length === 0) return;
  if (meterContext) meterContext.close();
  meterContext = new Ctx();
  const analyser = meterContext.createAnalyser();
  meterContext.createMediaStreamSource(stream).connect(analyser);
  const data = new Uint8Array(analyser.fftSize);
  const tick = () => {
    if (!meterContext || meterContext.state === "closed") return;
    analyser.getByteTimeDomainData(data);
    let peak = 0;
    for (const v of data) peak = Math.max(peak, Math.abs(v - 128) / 128);
    $("mic-level").value = peak;
    requestAnimationFrame(tick);
  };
  tick();
}

async function precheck() {
  if (!navigator.mediaDevices || !window.isSecureContext) {
    showPrecheckError(T.err_insecure);
    return;
  }
  try {
    await openDevices();
    await listDevices();
    $("join-button").disabled = false;
  } catch (err) {
    showPrecheckError(explain(err));
  }
  $("camera-select").addEventListener("change", () => openDevices().catch((e) => showPrecheckError(explain(e))));
  $("mic-select").addEventListener("change", () => openDevices().catch((e) => showPrecheckError(explain(e))));
}

// ---------------------------------------------------------------- signalling

function send(message) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(message));
}

function request(type, fields = {}) {
  const id = state.nextId++;
  return new Promise((resolve, reject) => {
    state.pending.set(id, { resolve, reject });
    send({ type, id, ...fields });
  });
}

function report(event, data = {}) {
  send({ type: "clientEvent", event, data });
}

// data-call-state mirrors the server's view so styles (and tests) can follow it.
function setStatus(text, callState) {
  $("status").textContent = text;
  if (callState) document.body.dataset.callState = callState;
}

function finish(text) {
  if (state.over) return;
  state.over = true;
  for (const pc of state.pcs.values()) pc.close();
  if (state.local) state.local.getTracks().forEach((t) => t.stop());
  $("call").hidden = true;
  $("outcome").hidden = false;
  $("outcome-text").textContent = text;
  document.body.dataset.callState = "over";
  if (state.ws) state.ws.close();
}

const FAILURES = {
  "no-media": "failed_no_media", "media-server-lost": "failed_media_server",
  "recording-failed": "failed_recording", "declined": "failed_declined",
  "ring-timeout": "failed_ring_timeout",
};

function onEvent(msg) {
  switch (msg.type) {
    case "candidate": addRemoteCandidate(msg); break;
    case "participantJoined": names.set(msg.participant.id, msg.participant.name); break;
    case "participantPublished": subscribe(msg.participant, msg.kinds); break;
    case "participantLeft": removeTile(msg.participant); setStatus(T.participant_left); break;
    case "recording": $("recording").hidden = msg.state !== "on"; break;
    case "callLive": setStatus(T.live, "live"); $("recording").hidden = false; break;
    case "callFailed": report("shown", { reason: msg.reason }); finish(T[FAILURES[msg.reason] || "failed_other"]); break;
    case "callEnded": finish(state.cancelled ? T.ring_cancelled : T.ended); break;
    case "replaced": finish(T.failed_other); break;
    case "incomingCall": showRing(msg.caller); break;
    case "ringAccepted": setStatus(T.ring_accepted); break;
    case "ringCancelled": state.cancelled = true; $("ring").hidden = true; break;
    case "ringTimeout": $("ring").hidden = true; break;
    case "removed": finish(T.ended); break;
    default: break;
  }
}

function connectSocket() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${scheme}//${location.host}/ws`, ["telemed.v1"]);
    state.ws = ws;
    ws.onopen = () => resolve(ws);
    ws.onerror = () => reject(new Error("WebSocket error"));
    ws.onclose = () => { if (!state.over) finish(T.failed_other); };
    ws.onmessage = (event) => {
      const msg = JSON.parse(event.data);
      if (msg.re !== undefined && state.pending.has(msg.re)) {
        const { resolve: ok, reject: fail } = state.pending.get(msg.re);
        state.pending.delete(msg.re);
        if (msg.type === "error") fail(Object.assign(new Error(msg.message), { code: msg.code }));
        else ok(msg);
        return;
      }
      if (msg.type === "error") { report("serverError", { code: msg.code }); return; }
      onEvent(msg);
    };
  });
}

// ---------------------------------------------------------------- media

function watch(pc, target) {
  const note = (what) => report("pc", { target, what, value: pc[what] });
  pc.addEventListener("iceconnectionstatechange", () => note("iceConnectionState"));
  pc.addEventListener("connectionstatechange", () => note("connectionState"));
  pc.addEventListener("signalingstatechange", () => note("signalingState"));
  pc.addEventListener("icegatheringstatechange", () => note("iceGatheringState"));
  pc.addEventListener("icecandidate", (e) => {
    send({ type: "candidate", target, candidate: e.candidate ? e.candidate.candidate : "",
           sdpMid: e.candidate ? e.candidate.sdpMid : null,
           sdpMLineIndex: e.candidate ? e.candidate.sdpMLineIndex : null });
  });
}

async function addRemoteCandidate(msg) {
  const pc = state.pcs.get(msg.target);
  const candidate = { candidate: msg.candidate, sdpMid: msg.sdpMid, sdpMLineIndex: msg.sdpMLineIndex };
  if (!pc || !pc.remoteDescription) {
    if (!state.pendingCandidates.has(msg.target)) state.pendingCandidates.set(msg.target, []);
    state.pendingCandidates.get(msg.target).push(candidate);
    return;
  }
  try { await pc.addIceCandidate(candidate); } catch (err) { report("candidateError", { message: String(err) }); }
}

async function negotiate(pc, target, type, fields) {
  await pc.setLocalDescription(await pc.createOffer());
  const reply = await request(type, { sdp: pc.localDescription.sdp, ...fields });
  await pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
  for (const c of state.pendingCandidates.get(target) || []) {
    try { await pc.addIceCandidate(c); } catch (err) { report("candidateError", { message: String(err) }); }
  }
  state.pendingCandidates.delete(target);
}

async function publish() {
  const pc = new RTCPeerConnection({ iceServers: state.iceServers });
  state.pcs.set("publish", pc);
  watch(pc, "publish");
  for (const track of state.local.getTracks()) pc.addTransceiver(track, { direction: "sendonly", streams: [state.local] });
  await negotiate(pc, "publish", "publish", {});
  state.published = true;
}

function tile(participant, name) {
  let fig = state.tiles.get(participant);
  if (!fig) {
    fig = document.createElement("figure");
    fig.className = "tile";
    fig.dataset.participant = participant;
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    const caption = document.createElement("figcaption");
    caption.textContent = name || participant;
    fig.append(video, caption);
    $("grid").appendChild(fig);
    state.tiles.set(participant, fig);
    $("grid").dataset.count = String(state.tiles.size + 1);
  }
  return fig;
}

function removeTile(participant) {
  const pc = state.pcs.get(participant);
  if (pc) pc.close();
  state.pcs.delete(participant);
  const fig = state.tiles.get(participant);
  if (fig) fig.remove();
  state.tiles.delete(participant);
  state.reported.delete(participant);
  $("grid").dataset.count = String(state.tiles.size + 1);
}

const names = new Map();

async function subscribe(participant, kinds) {
  if (!kinds || kinds.length === 0 || state.pcs.has(participant) || state.over) return;
  const pc = new RTCPeerConnection({ iceServers: state.iceServers });
  state.pcs.set(participant, pc);
  watch(pc, participant);
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.addTransceiver("video", { direction: "recvonly" });
  const stream = new MediaStream();
  pc.addEventListener("track", (e) => {
    stream.addTrack(e.track);
    const video = tile(participant, names.get(participant)).querySelector("video");
    video.srcObject = stream;
    video.play().catch(() => {});
  });
  try {
    await negotiate(pc, participant, "subscribe", { participant });
  } catch (err) {
    report("subscribeFailed", { participant, code: err.code });
  }
}

// Kurento sees media only up to its own sending element; the browser confirms arrival.
async function pollStats() {
  if (state.over) return;
  let text = "";
  for (const [target, pc] of state.pcs) {
    if (target === "publish") continue;
    const stats = await pc.getStats();
    let bytes = 0, lost = 0, received = 0, rtt = null, level = 0;
    stats.forEach((s) => {
      if (s.type === "inbound-rtp") {
        bytes += s.bytesReceived || 0; lost += s.packetsLost || 0; received += s.packetsReceived || 0;
        if (s.kind === "audio" && s.audioLevel !== undefined) level = s.audioLevel;
      }
      if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) rtt = s.currentRoundTripTime;
    });
    if (bytes > 0 && !state.reported.has(target)) {
      state.reported.add(target);
      report("mediaReceived", { participant: target });
    }
    const fig = state.tiles.get(target);
    if (fig) fig.classList.toggle("speaking", level > 0.05);
    const prev = pc._telemedBytes || 0;
    pc._telemedBytes = bytes;
    const kbps = Math.round(((bytes - prev) * 8) / 1000);
    const loss = received + lost > 0 ? ((100 * lost) / (received + lost)).toFixed(1) : "0";
    text = `${kbps} kbit/s · ${loss}% · ${rtt !== null ? Math.round(rtt * 1000) + " ms" : "—"}`;
  }
  $("quality").textContent = text;
}

async function enterCall() {
  const joined = await request("join");
  state.me = joined.you.id;
  state.iceServers = joined.iceServers || [];
  if (meterContext) { meterContext.close(); meterContext = null; }
  $("precheck").hidden = true;
  $("ring").hidden = true;
  $("call").hidden = false;
  setStatus(joined.participants.length ? T.connecting : T.waiting);
  for (const p of joined.participants) names.set(p.id, p.name);
  await publish();
  for (const p of joined.participants) subscribe(p.id, p.published);
  setInterval(() => pollStats().catch(() => {}), 1000);
  const consultant = joined.participants.find((p) => p.role === "consultant");
  const ringOut = $("ring-out");
  if (ringOut && joined.call.kind === "referral" && consultant && joined.call.state !== "connecting") {
    ringOut.hidden = false;
    ringOut.addEventListener("click", async () => {
      ringOut.disabled = true;
      try {
        await request("ring", { participant: consultant.id });
        setStatus(T.ringing, "ringing");
      } catch (err) {
        ringOut.disabled = false;
        setStatus(`${T.err_generic} ${err.message}`);
      }
    });
  }
}

// A consultant's workstation is online for a referral and rings when the doctor calls.
function showRing(caller) {
  $("precheck").hidden = true;
  $("ring-text").textContent = `${T.ring_incoming}: ${caller.name}`;
  $("ring").hidden = false;
  document.body.dataset.callState = "ringing";
}

async function join() {
  $("join-button").disabled = true;
  $("join-button").textContent = T.joining;
  try {
    await connectSocket();
    const welcome = await request("hello", { token });
    if (welcome.kind === "referral" && role === "consultant" && welcome.state !== "connecting"
        && welcome.state !== "live") {
      $("join-button").textContent = T.referral_waiting;
      document.body.dataset.callState = "waiting";
      return;
    }
    await enterCall();
  } catch (err) {
    $("join-button").textContent = T.join;
    $("join-button").disabled = false;
    const authFailed = err.code && err.code.startsWith("auth.");
    showPrecheckError(authFailed || err.code === "call.not_found" ? T.err_token : `${T.err_generic} ${err.message}`);
    if (state.ws) { state.over = true; state.ws.close(); state.over = false; }
  }
}

$("accept").addEventListener("click", async () => {
  $("accept").disabled = $("decline").disabled = true;
  try {
    await request("accept");
    await enterCall();
  } catch (err) {
    finish(`${T.err_generic} ${err.message}`);
  }
});
$("decline").addEventListener("click", async () => {
  $("accept").disabled = $("decline").disabled = true;
  try { await request("decline"); } catch (err) { /* the call is over either way */ }
  finish(T.declined_by_you);
});

function toggle(kind, button, offLabel, onLabel) {
  const tracks = kind === "audio" ? state.local.getAudioTracks() : state.local.getVideoTracks();
  const enabled = !tracks.every((t) => t.enabled);
  tracks.forEach((t) => { t.enabled = enabled; });
  button.setAttribute("aria-pressed", String(!enabled));
  const label = enabled ? offLabel : onLabel;
  button.setAttribute("aria-label", label);
  button.title = label;
  report(kind === "audio" ? "micToggled" : "cameraToggled", { enabled });
}

$("join-button").addEventListener("click", join);
$("mute").addEventListener("click", (e) => toggle("audio", e.currentTarget, T.mute, T.unmute));
$("camera").addEventListener("click", (e) => toggle("video", e.currentTarget, T.camera_off, T.camera_on));
$("hangup").addEventListener("click", async () => {
  try { await request("leave"); } catch (err) { /* leaving anyway */ }
  finish(T.ended);
});
const endAll = $("end-all");
if (endAll) endAll.addEventListener("click", () => request("end").catch(() => {}));
window.addEventListener("pagehide", () => send({ type: "leave" }));

precheck();
