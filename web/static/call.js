// The call page: pre-call check, then one publishing RTCPeerConnection and one receiving
// RTCPeerConnection per other participant, driven over the telemed.v1 WebSocket protocol.
import { checkNetwork, codeText, explain, listDevices, openDevices, startMeter, unsupportedReason } from "./precheck.js";
import { selectedPair, totals } from "./stats.js";
import { failureText, makeNotifier } from "./outcome.js";
import { looksBlack, showMedia, tileParts } from "./tiles.js";

const app = document.getElementById("app");
// Strings come in a data attribute: the page's policy runs no inline script.
const T = JSON.parse(app.dataset.strings);
const token = app.dataset.token;
const role = app.dataset.role;
const $ = (id) => document.getElementById(id);

const state = {
  ws: null, nextId: 1, pending: new Map(), local: null, iceServers: [], authed: false,
  queued: [], pcs: new Map(), tiles: new Map(), reported: new Set(), names: new Map(),
  pendingCandidates: new Map(), over: false, inCall: false, waiting: false,
  reconnecting: false, freshMedia: false, serverLive: false, cancelled: false, stopMeter: () => {},
  statsTimer: null, ringWired: false, ringer: null, countdown: null, last: new Map(),
  grace: Number(app.dataset.grace) || 20, network: null, speaker: null, serverErrors: 0,
  me: null, present: new Map(), audioOnly: false, silentSince: new Map(), told: new Set(),
};
// The embedding page (if the MIS framed us) hears joined, live, ended and failed.
const notify = makeNotifier(JSON.parse(app.dataset.embedders || "[]"));
// Participant states in which someone is (or is about to be) in the call with us.
const PRESENT = new Set(["connecting", "connected", "reconnecting"]);

// ---------------------------------------------------------------- pre-call check

function showPrecheckError(text) {
  const el = $("precheck-error");
  el.textContent = text;
  el.hidden = false;
}

async function useDevices() {
  try {
    state.local = await openDevices(state.local);
    state.audioOnly = false;
  } catch (err) {
    // No camera, or the camera refused: the microphone alone still makes a consultation.
    if (!["NotAllowedError", "NotFoundError", "OverconstrainedError", "NotReadableError",
          "SecurityError"].includes(err && err.name)) throw err;
    state.local = await openDevices(null, { video: false }).catch(() => { throw err; });
    state.audioOnly = true;
    report("mediaError", { name: err.name, message: String(err.message), audioOnly: true });
  }
  setAudioOnly(state.audioOnly);
  $("preview").srcObject = state.local;
  $("local").srcObject = state.local;
  state.stopMeter();
  state.stopMeter = startMeter(state.local, $("mic-level"));
  $("precheck-error").hidden = true;
}

// Joining with the microphone only: said above the preview, the camera button off.
function setAudioOnly(on) {
  const note = $("audio-only");
  note.hidden = !on;
  $("preview-wrap").classList.toggle("no-picture", on);
  const camera = $("camera");
  camera.disabled = on;
  camera.setAttribute("aria-pressed", String(on));
  showMedia($("self-tile"), T, { video: !on });
}

async function precheck() {
  const unsupported = unsupportedReason(T);
  if (unsupported) {
    showPrecheckError(unsupported);
    document.body.dataset.callState = "unsupported";
    return;
  }
  checkNetwork(T, token).then((verdict) => {
    state.network = verdict;
    report("networkCheck", verdict);
  });
  try {
    await useDevices();
    await listDevices(T);
    $("join-button").disabled = false;
    // A consultant who answered the ring on the workstation joins without a second click.
    if (new URLSearchParams(location.search).has("answered")) join();
  } catch (err) {
    report("mediaError", { name: err && err.name, message: String(err && err.message) });
    showPrecheckError(explain(T, err));
  }
  for (const id of ["camera-select", "mic-select"]) {
    $(id).addEventListener("change", () => useDevices().then(() => {
      $("join-button").disabled = false;
    }).catch((e) => showPrecheckError(explain(T, e))));
  }
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

// Diagnostics land in the call's timeline. The server takes them from joined connections
// only, so those from before `join` (or while rejoining) wait for it.
function report(event, data = {}) {
  const message = { type: "clientEvent", event, data };
  if (state.inCall && state.authed) send(message);
  else if (state.queued.length < 50) state.queued.push(message);
}

// data-call-state mirrors the call's state so styles (and tests) can follow it.
function setStatus(text, callState) {
  $("status").textContent = text;
  if (callState) document.body.dataset.callState = callState;
}

function finish(text, { retry = false } = {}) {
  if (state.over) return;
  state.over = true;
  for (const pc of state.pcs.values()) pc.close();
  if (state.local) state.local.getTracks().forEach((t) => t.stop());
  state.stopMeter();
  stopRinging();
  clearInterval(state.statsTimer);
  $("precheck").hidden = true;
  $("call").hidden = true;
  $("ring").hidden = true;
  $("outcome").hidden = false;
  $("outcome-text").textContent = text;
  $("retry").hidden = !retry;
  // The keyboard (and a screen reader) land on what happened, not on a vanished button.
  $("outcome-text").focus();
  document.body.dataset.callState = "over";
  const ws = state.ws;
  state.ws = null;
  if (ws) ws.close();
}

// The status while the call is not live: who we wait for, if nobody else is here.
function waitingStatus() {
  const others = [...state.present.values()].filter((p) => PRESENT.has(p.state));
  if (others.length) { setStatus(T.connecting, "connecting"); return; }
  const key = role === "patient" ? "waiting_doctor" : role === "doctor" ? "waiting_patient"
    : "waiting";
  setStatus(T[key], "alone");
}

function onEvent(msg) {
  switch (msg.type) {
    case "candidate": addRemoteCandidate(msg); break;
    case "participantJoined":
      // A rejoin (even one so quick that no participantReconnecting came first) means
      // the server dropped their old media: the next participantPublished starts afresh.
      state.names.set(msg.participant.id, msg.participant.name);
      state.present.set(msg.participant.id, msg.participant);
      closePc(msg.participant.id);
      markTile(msg.participant.id, "");
      peerState(msg.participant.id, "connected");
      if (!state.serverLive) waitingStatus();
      break;
    case "participantPublished": subscribe(msg.participant, msg.kinds); break;
    case "participantReconnecting":
      closePc(msg.participant);
      markTile(msg.participant, T.peer_reconnecting);
      peerState(msg.participant, "reconnecting");
      // Not live while someone is missing; their pictures coming back make it live again.
      setStatus(T.peer_reconnecting, "peer-reconnecting");
      break;
    case "participantLeft":
      removeTile(msg.participant);
      state.present.delete(msg.participant);
      setStatus(T.participant_left);
      break;
    case "participantMedia":
      state.told.add(msg.participant);
      showMedia(state.tiles.get(msg.participant), T, { audio: msg.audio, video: msg.video });
      break;
    case "mediaInterrupted": if (msg.viewer) markTile(msg.participant, T.media_interrupted); break;
    case "mediaRestored": if (msg.viewer) markTile(msg.participant, ""); break;
    case "recording": $("recording").hidden = msg.state !== "on"; break;
    case "callLive":
      state.serverLive = true;
      setStatus(T.live, "live");
      $("recording").hidden = false;
      notify("live");
      break;
    case "callFailed":
      report("shown", { reason: msg.reason });
      notify("failed", { reason: msg.reason });
      finish(failureText(T, { role, me: state.me, names: state.names, reason: msg.reason,
                              detail: msg.detail }),
             { retry: !["declined", "ring-timeout"].includes(msg.reason) });
      break;
    case "callEnded":
      notify("ended");
      finish(state.cancelled ? T.ring_cancelled : T.ended);
      break;
    case "replaced": finish(T.replaced); break;
    case "incomingCall": showRing(msg.caller, msg.timeout); break;
    case "ringAccepted": setStatus(T.ring_accepted); break;
    case "ringCancelled": state.cancelled = true; stopRinging(); break;
    case "ringTimeout": stopRinging(); break;
    case "removed": finish(T.removed); break;
    case "tokenExpiring": setStatus(T.token_expiring); break;
    case "iceServers":
      // A renewed TURN lease: new and restarted connections must use it.
      state.iceServers = msg.iceServers || [];
      for (const pc of state.pcs.values()) {
        try { pc.setConfiguration({ ...pc.getConfiguration(), iceServers: state.iceServers }); }
        catch (err) { report("configurationError", { message: String(err) }); }
      }
      break;
    default: break;
  }
}

function connectSocket() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${scheme}//${location.host}/ws`, ["telemed.v1"]);
    state.ws = ws;
    ws.onopen = () => resolve(ws);
    ws.onerror = () => reject(Object.assign(new Error("websocket"), { code: "socket.error" }));
    ws.onclose = () => {
      if (state.ws !== ws) return;
      state.ws = null;
      state.authed = false;
      for (const { reject: fail } of state.pending.values()) {
        fail(Object.assign(new Error("closed"), { code: "socket.closed" }));
      }
      state.pending.clear();
      reject(Object.assign(new Error("closed"), { code: "socket.closed" }));
      if (!state.over && (state.inCall || state.waiting)) reconnect();
    };
    ws.onmessage = (event) => {
      const msg = JSON.parse(event.data);
      if (msg.re !== undefined && state.pending.has(msg.re)) {
        const { resolve: ok, reject: fail } = state.pending.get(msg.re);
        state.pending.delete(msg.re);
        if (msg.type === "error") fail(Object.assign(new Error(msg.message), { code: msg.code }));
        else ok(msg);
        return;
      }
      // Counted, so that an error about a report cannot feed on itself.
      if (msg.type === "error") {
        if (state.serverErrors++ < 5) report("serverError", { code: msg.code });
        return;
      }
      onEvent(msg);
    };
  });
}

async function hello() {
  const welcome = await request("hello", { token });
  state.authed = true;
  state.me = welcome.participant;
  return welcome;
}

// ---------------------------------------------------------------- reconnecting

const TERMINAL = /^(auth\.|call\.(ended|not_found|not_yours|removed))/;
// A service restart leaves the server unreachable for a while, then holds our place for
// the grace from when it is back: while it cannot be reached at all, keep trying this long.
const UNREACHABLE_WAIT = 120000;

// The socket dropped: come back within the rejoin grace and keep our place in the call.
async function reconnect() {
  if (state.over || state.reconnecting) return;
  state.reconnecting = true;
  const wasInCall = state.inCall;
  setStatus(T.reconnecting, "reconnecting");
  // Peer connections are kept until the server says whether their endpoints still exist
  // (it restarted and took the call over) or not (they were released with the socket).
  const deadline = Date.now() + state.grace * 1000;
  const unreachableDeadline = Date.now() + Math.max(state.grace * 1000, UNREACHABLE_WAIT);
  let delay = 300;
  while (!state.over) {
    try {
      await connectSocket();
      await hello();
      if (wasInCall) await enterCall({ resume: !state.freshMedia });
      else setWaiting();
      state.reconnecting = false;
      report("reconnected", {});
      return;
    } catch (err) {
      const ws = state.ws;
      state.ws = null;
      if (ws) ws.close();
      if (err.code && TERMINAL.test(err.code)) {
        if (err.code === "call.ended") notify("ended");
        finish(err.code === "call.ended" ? T.ended : T.reconnect_failed, { retry: err.code !== "call.ended" });
        return;
      }
      const unreachable = err.code === "socket.error" || err.code === "socket.closed";
      if (Date.now() + delay > (unreachable ? unreachableDeadline : deadline)) {
        finish(T.reconnect_failed, { retry: true });
        return;
      }
      await new Promise((resume) => {
        const timer = setTimeout(resume, delay);
        window.addEventListener("online", () => { clearTimeout(timer); resume(); }, { once: true });
      });
      delay = Math.min(delay * 2, 3000);
    }
  }
}

// ICE that failed after it had worked (the network changed under us): rejoin on a fresh socket.
function restartSession(target) {
  if (state.over || state.reconnecting || !state.ws) return;
  report("restart", { target });
  state.freshMedia = true;  // these peer connections failed: never resume them
  state.ws.close();
}

// ---------------------------------------------------------------- media

function watch(pc, target) {
  let connectedOnce = false;
  const note = (what) => {
    report("pc", { target, what, value: pc[what] });
    if (pc[what] === "failed") report("pcFailed", { target, what });
  };
  const connected = () => {
    pc.getStats().then((stats) => {
      const pair = selectedPair(stats);
      if (pair) report("selectedPair", { target, ...pair });
    }).catch((err) => report("statsError", { target, message: String(err) }));
  };
  pc.addEventListener("iceconnectionstatechange", () => {
    note("iceConnectionState");
    const s = pc.iceConnectionState;
    if ((s === "connected" || s === "completed") && !connectedOnce) { connectedOnce = true; connected(); }
    if (s === "failed" && connectedOnce && state.pcs.get(target) === pc) restartSession(target);
  });
  pc.addEventListener("connectionstatechange", () => note("connectionState"));
  pc.addEventListener("signalingstatechange", () => note("signalingState"));
  pc.addEventListener("icegatheringstatechange", () => note("iceGatheringState"));
  pc.addEventListener("icecandidateerror", (e) => {
    report("candidateError", { target, url: e.url, code: e.errorCode, text: String(e.errorText || "") });
  });
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

function newPc(target) {
  const pc = new RTCPeerConnection({ iceServers: state.iceServers });
  state.pcs.set(target, pc);
  watch(pc, target);
  return pc;
}

function closePc(target) {
  state.silentSince.delete(target);
  const pc = state.pcs.get(target);
  if (pc) pc.close();
  state.pcs.delete(target);
  state.reported.delete(target);
  state.last.delete(target);
}

async function publish() {
  const pc = newPc("publish");
  for (const track of state.local.getTracks()) pc.addTransceiver(track, { direction: "sendonly", streams: [state.local] });
  await negotiate(pc, "publish", "publish", {});
}

function updateGrid() {
  $("grid").dataset.count = String(state.tiles.size + 1);
}

function tile(participant) {
  let fig = state.tiles.get(participant);
  if (!fig) {
    fig = document.createElement("figure");
    fig.className = "tile";
    fig.dataset.participant = participant;
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    const name = state.names.get(participant) || participant;
    tileParts(fig, name, video);
    const note = document.createElement("span");
    note.className = "tile-note";
    note.hidden = true;
    fig.append(note);
    video.setAttribute("aria-label", name);
    $("grid").appendChild(fig);
    state.tiles.set(participant, fig);
    updateGrid();
  }
  return fig;
}

function markTile(participant, text) {
  const fig = state.tiles.get(participant);
  if (!fig) return;
  const note = fig.querySelector(".tile-note");
  note.textContent = text;
  note.hidden = !text;
  fig.classList.toggle("troubled", Boolean(text));
}

// A participant's connection state on their tile (reconnecting, or back).
function peerState(participant, value) {
  const fig = state.tiles.get(participant);
  if (fig) fig.dataset.state = value;
}

function removeTile(participant) {
  closePc(participant);
  const fig = state.tiles.get(participant);
  if (fig) fig.remove();
  state.tiles.delete(participant);
  updateGrid();
}

async function subscribe(participant, kinds) {
  if (!kinds || kinds.length === 0 || state.pcs.has(participant) || state.over) return;
  const pc = newPc(participant);
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.addTransceiver("video", { direction: "recvonly" });
  // Audio only (no camera, or refused): the tile shows the name instead of a picture.
  const fig = tile(participant);
  if (!kinds.includes("audio")) fig.dataset.sends = "video";
  showMedia(fig, T, { video: kinds.includes("video"),
                      audio: kinds.includes("audio") ? undefined : false });
  const stream = new MediaStream();
  pc.addEventListener("track", (e) => {
    stream.addTrack(e.track);
    const video = tile(participant).querySelector("video");
    if (video.srcObject !== stream) video.srcObject = stream;
    video.play().catch(() => {});
  });
  try {
    await negotiate(pc, participant, "subscribe", { participant });
  } catch (err) {
    report("subscribeFailed", { participant, code: err.code });
  }
}

function quality(kbps, loss, rtt) {
  const el = $("quality");
  if (kbps === 0) {
    // Nothing flows (yet): no grade to give, and certainly not "good".
    el.dataset.grade = "none";
    el.dataset.kbps = "0";
    $("quality-text").textContent = T.quality_none;
    return;
  }
  const grade = loss > 5 || (rtt !== null && rtt > 0.4) ? "poor"
    : loss > 1 || (rtt !== null && rtt > 0.2) ? "fair" : "good";
  el.dataset.grade = grade;
  el.dataset.kbps = String(kbps);
  el.dataset.loss = loss.toFixed(1);
  el.dataset.rtt = rtt === null ? "" : String(Math.round(rtt * 1000));
  const rttText = rtt === null ? "—" : `${Math.round(rtt * 1000)} ${T.unit_ms}`;
  $("quality-text").textContent = `${T["quality_" + grade]} · ${kbps} ${T.unit_kbps} · `
    + `${T.quality_loss} ${loss.toFixed(1)}% · ${T.quality_rtt} ${rttText}`;
}

// Kurento sees media only up to its own sending element; the browser confirms arrival.
async function pollStats() {
  if (state.over || state.reconnecting) return;
  let bits = 0, received = 0, lost = 0, rtt = null, loudest = null, loudestLevel = 0.02;
  for (const [target, pc] of [...state.pcs]) {
    const now = totals(await pc.getStats());
    const before = state.last.get(target) || { bytesIn: 0, bytesOut: 0, received: 0, lost: 0 };
    state.last.set(target, now);
    bits += (now.bytesIn - before.bytesIn + now.bytesOut - before.bytesOut) * 8;
    received += now.received - before.received;
    lost += now.lost - before.lost;
    if (now.rtt !== null) rtt = rtt === null ? now.rtt : Math.max(rtt, now.rtt);
    if (target === "publish") continue;
    if (now.bytesIn > 0 && !state.reported.has(target)) {
      state.reported.add(target);
      report("mediaReceived", { participant: target });
      markTile(target, "");
    }
    if (now.level > loudestLevel) { loudest = target; loudestLevel = now.level; }
    guessMedia(target, now);
  }
  // Held for a moment, so the highlight does not flicker between words.
  if (loudest) state.speaker = { id: loudest, at: Date.now() };
  const speaker = state.speaker && Date.now() - state.speaker.at < 2500 ? state.speaker.id : null;
  for (const [participant, fig] of state.tiles) fig.classList.toggle("speaking", participant === speaker);
  const subscribed = [...state.pcs.keys()].filter((k) => k !== "publish");
  // After a rejoin the call is already live: show it once every picture came back.
  if (state.serverLive && subscribed.length && subscribed.every((k) => state.reported.has(k))
      && document.body.dataset.callState !== "live") {
    setStatus(T.live, "live");
  }
  const loss = received + lost > 0 ? (100 * lost) / (received + lost) : 0;
  quality(Math.round(bits / 1000), loss, rtt);
}

// Camera off and microphone off as they arrive (black frames; no audio energy for a
// while), unless the server told us (participantMedia).
function guessMedia(target, now) {
  const fig = state.tiles.get(target);
  if (!fig || state.told.has(target) || !state.reported.has(target)) return;
  const update = {};
  // Two black seconds in a row: a decoder's first frames may be black too.
  const black = looksBlack(fig.querySelector("video"));
  const wasBlack = fig.dataset.black === "1";
  fig.dataset.black = black ? "1" : "0";
  if (black === false) update.video = true;
  else if (black && wasBlack) update.video = false;
  if (fig.dataset.sends !== "video") {
    const heard = state.silentSince.get(target) || { energy: -1, at: Date.now() };
    // A disabled microphone sends digital silence; codecs may add a trace of noise.
    const sound = now.energy - heard.energy > 1e-7;
    if (sound) state.silentSince.set(target, { energy: now.energy, at: Date.now() });
    update.audio = sound || Date.now() - heard.at < 2500;
  }
  showMedia(fig, T, update);
}

async function enterCall({ resume = false } = {}) {
  const joined = await request("join", resume && state.pcs.has("publish") ? { resume: true } : {});
  state.freshMedia = false;
  state.inCall = true;
  state.waiting = false;
  state.iceServers = joined.iceServers || [];
  state.serverLive = joined.call.state === "live";
  state.stopMeter();
  $("precheck").hidden = true;
  stopRinging();
  $("call").hidden = false;
  for (const p of joined.participants) {
    state.names.set(p.id, p.name);
    state.present.set(p.id, p);
  }
  // Connecting (or waiting, when alone) even in a live call we rejoin: its pictures have
  // to come back before it is live for us.
  waitingStatus();
  $("self-initial").textContent = (joined.you.name || "?").trim().charAt(0).toUpperCase();
  notify("joined", { call: joined.call.id, participant: joined.you.id });
  for (const message of state.queued.splice(0)) send(message);
  if (joined.resumed) {
    // Our media never stopped: keep what the server still has, report arrival again.
    const kept = new Set(["publish", ...joined.media.subscriptions]);
    for (const id of [...state.pcs.keys()]) if (!kept.has(id)) closePc(id);
    state.reported.clear();
    for (const p of joined.participants) {
      if (p.published.length && !state.pcs.has(p.id)) subscribe(p.id, p.published);
    }
  } else {
    for (const id of [...state.pcs.keys()]) closePc(id);
    state.pendingCandidates.clear();
    await publish();
    for (const p of joined.participants) subscribe(p.id, p.published);
  }
  if (!state.statsTimer) state.statsTimer = setInterval(() => pollStats().catch(() => {}), 1000);
  wireRingOut(joined);
}

function wireRingOut(joined) {
  const consultant = joined.participants.find((p) => p.role === "consultant");
  const ringOut = $("ring-out");
  if (!ringOut || state.ringWired || joined.call.kind !== "referral" || !consultant
      || joined.call.state !== "created") return;
  state.ringWired = true;
  ringOut.hidden = false;
  ringOut.addEventListener("click", async () => {
    ringOut.disabled = true;
    try {
      await request("ring", { participant: consultant.id });
      setStatus(T.ringing, "ringing");
      ringOut.hidden = true;
    } catch (err) {
      ringOut.disabled = false;
      setStatus(err.code === "participant.offline" ? T.consultant_offline : `${T.err_generic} ${err.message}`);
    }
  });
}

// ---------------------------------------------------------------- referral ringing

function setWaiting() {
  state.waiting = true;
  $("join-button").hidden = true;
  $("standby").hidden = false;
  document.body.dataset.callState = "waiting";
}

// A consultant's workstation is online for a referral and rings when the doctor calls.
function showRing(caller, timeout) {
  $("precheck").hidden = true;
  $("ring-text").textContent = `${T.ring_incoming}: ${caller.name}`;
  $("ring").hidden = false;
  $("accept").focus();
  document.body.dataset.callState = "ringing";
  let left = Math.round(timeout);
  const tick = () => { $("ring-countdown").textContent = `${T.ring_answer_within} ${left} ${T.unit_s}`; left -= 1; };
  tick();
  state.countdown = setInterval(() => { if (left >= 0) tick(); }, 1000);
  if (state.ringer) state.ringer.start();
}

function stopRinging() {
  $("ring").hidden = true;
  clearInterval(state.countdown);
  if (state.ringer) state.ringer.stop();
}

// A two-tone ring made on the spot; the context is created on a click so browsers let it play.
function makeRinger() {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return null;
  const context = new Ctx();
  let timer = null;
  const beep = () => {
    for (const [freq, at] of [[880, 0], [660, 0.25]]) {
      const osc = context.createOscillator();
      const gain = context.createGain();
      gain.gain.value = 0.08;
      osc.frequency.value = freq;
      osc.connect(gain).connect(context.destination);
      osc.start(context.currentTime + at);
      osc.stop(context.currentTime + at + 0.2);
    }
  };
  return {
    start() { if (!timer) { context.resume().catch(() => {}); beep(); timer = setInterval(beep, 2000); } },
    stop() { clearInterval(timer); timer = null; },
  };
}

async function join() {
  $("join-button").disabled = true;
  $("join-button").textContent = T.joining;
  if (role === "consultant" && !state.ringer) state.ringer = makeRinger();
  try {
    await connectSocket();
    const welcome = await hello();
    if (welcome.kind === "referral" && role === "consultant" && welcome.state !== "connecting"
        && welcome.state !== "live") {
      setWaiting();
      return;
    }
    await enterCall();
  } catch (err) {
    $("join-button").textContent = T.join;
    $("join-button").disabled = false;
    const text = codeText(T, err.code) || (err.code === "turn.exhausted" ? T.failed_turn
      : `${T.err_generic} ${err.message}`);
    report("joinFailed", { code: err.code || null });
    showPrecheckError(text);
    state.inCall = false;
    const ws = state.ws;
    state.ws = null;
    if (ws) ws.close();
  }
}

function mediaState() {
  const on = (tracks) => tracks.length > 0 && tracks.some((t) => t.enabled);
  return { audio: on(state.local.getAudioTracks()), video: on(state.local.getVideoTracks()) };
}

function toggle(kind, button, offLabel, onLabel) {
  const tracks = kind === "audio" ? state.local.getAudioTracks() : state.local.getVideoTracks();
  const enabled = !tracks.every((t) => t.enabled);
  tracks.forEach((t) => { t.enabled = enabled; });
  button.setAttribute("aria-pressed", String(!enabled));
  const label = enabled ? offLabel : onLabel;
  button.setAttribute("aria-label", label);
  button.title = label;
  showMedia($("self-tile"), T, kind === "audio" ? { audio: enabled } : { video: enabled });
  report(kind === "audio" ? "micToggled" : "cameraToggled", { enabled });
  // For the others' tiles; a server that relays it sends participantMedia (docs/web.md).
  report("mediaState", mediaState());
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
$("join-button").addEventListener("click", join);
$("mute").addEventListener("click", (e) => toggle("audio", e.currentTarget, T.mute, T.unmute));
$("camera").addEventListener("click", (e) => toggle("video", e.currentTarget, T.camera_off, T.camera_on));
$("hangup").addEventListener("click", async () => {
  state.inCall = false;
  try { await request("leave"); } catch (err) { /* leaving anyway */ }
  finish(T.ended);
});
$("retry").addEventListener("click", () => location.reload());
const endAll = $("end-all");
if (endAll) endAll.addEventListener("click", () => request("end").catch(() => {}));
window.addEventListener("pagehide", () => send({ type: "leave" }));
window.addEventListener("error", (e) => report("pageError", { message: String(e.message).slice(0, 300) }));
window.addEventListener("unhandledrejection", (e) => report("pageError", { message: String(e.reason).slice(0, 300) }));

precheck();
