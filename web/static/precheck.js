// The pre-call check: camera and microphone preview with device choice, a level meter, and
// a network check that gathers relay candidates with this participant's TURN credentials.
const $ = (id) => document.getElementById(id);

// Browsers that cannot take part at all, told apart from a page served without TLS.
export function unsupportedReason(T) {
  if (!window.isSecureContext) return T.err_insecure;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia
      || typeof RTCPeerConnection !== "function" || typeof WebSocket !== "function") {
    return T.err_unsupported;
  }
  return null;
}

export function explain(T, err) {
  const unsupported = unsupportedReason(T);
  if (unsupported) return unsupported;
  switch (err && err.name) {
    case "NotAllowedError": case "SecurityError": case "PermissionDeniedError":
      return T.err_permission;
    case "NotFoundError": case "DevicesNotFoundError": case "OverconstrainedError":
      return T.err_no_device;
    case "NotReadableError": case "TrackStartError": case "AbortError":
      return T.err_busy;
    default: return `${T.err_generic} ${err && err.message ? err.message : err}`;
  }
}

// The chosen camera and microphone; `{video: false}` for the microphone alone.
export async function openDevices(previous, { video = true } = {}) {
  const camera = $("camera-select").value;
  const mic = $("mic-select").value;
  const size = { width: { ideal: 640 }, height: { ideal: 480 } };
  const constraints = {
    audio: mic ? { deviceId: { exact: mic } } : true,
    video: !video ? false : camera ? { deviceId: { exact: camera }, ...size } : size,
  };
  if (previous) previous.getTracks().forEach((t) => t.stop());
  return navigator.mediaDevices.getUserMedia(constraints);
}

export async function listDevices(T) {
  const devices = await navigator.mediaDevices.enumerateDevices();
  const kinds = [["videoinput", "camera-select", T.camera], ["audioinput", "mic-select", T.microphone]];
  for (const [kind, select, fallback] of kinds) {
    const el = $(select);
    const current = el.value;
    el.textContent = "";
    devices.filter((d) => d.kind === kind).forEach((d, i) => {
      const opt = document.createElement("option");
      opt.value = d.deviceId;
      // Labels stay empty until the user granted access (Firefox, Safari).
      opt.textContent = d.label || `${fallback} ${i + 1}`;
      el.appendChild(opt);
    });
    if (current) el.value = current;
  }
}

// A peak meter on the microphone; returns a function that stops it.
export function startMeter(stream, element) {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx || stream.getAudioTracks().length === 0) return () => {};
  const context = new Ctx();
  const analyser = context.createAnalyser();
  context.createMediaStreamSource(stream).connect(analyser);
  const data = new Uint8Array(analyser.fftSize);
  let running = true;
  const tick = () => {
    if (!running) return;
    analyser.getByteTimeDomainData(data);
    let peak = 0;
    for (const v of data) peak = Math.max(peak, Math.abs(v - 128) / 128);
    element.value = peak;
    element.dataset.peak = peak.toFixed(3);
    requestAnimationFrame(tick);
  };
  // Safari starts an AudioContext suspended until a user gesture.
  if (context.state === "suspended") context.resume().catch(() => {});
  tick();
  return () => { running = false; context.close().catch(() => {}); };
}

// Gathers candidates through the TURN server only: a relay candidate proves that media can
// reach the service even from networks that block everything else.
export async function relayWorks(iceServers, timeoutMs) {
  const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: "relay" });
  try {
    pc.createDataChannel("network-check");
    const found = new Promise((resolve) => {
      const timer = setTimeout(() => resolve(null), timeoutMs);
      pc.addEventListener("icecandidate", (e) => {
        if (!e.candidate || / typ relay/.test(e.candidate.candidate)) {
          clearTimeout(timer);
          resolve(e.candidate ? e.candidate.candidate : null);
        }
      });
    });
    await pc.setLocalDescription(await pc.createOffer());
    return await found;
  } finally {
    pc.close();
  }
}

// What an error code from the service means to the person holding the link, or null when
// it says nothing about the link (the caller then shows its own text). Only a link that
// can never work is "invalid or expired"; a call that is over or a removal says so.
export function codeText(T, code) {
  if (!code) return null;
  if (code.startsWith("auth.") || code === "call.not_found" || code === "call.not_yours") {
    return T.err_token;
  }
  if (code === "call.ended") return T.ended;
  if (code === "call.removed") return T.removed;
  return null;
}

// Runs the network check and shows its verdict; returns it for the call's timeline.
export async function checkNetwork(T, token) {
  const box = $("network");
  const show = (result, text) => {
    box.dataset.result = result;
    $("network-text").textContent = text;
  };
  show("checking", T.net_checking);
  let servers;
  try {
    const reply = await fetch("/precheck/ice", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token }), cache: "no-store",
    });
    const body = await reply.json();
    if (!reply.ok) {
      const text = codeText(T, body.code);
      show(text ? "token" : "error", text || T.net_unavailable);
      return { result: text ? "token" : "error", code: body.code };
    }
    servers = body.iceServers;
  } catch (err) {
    show("error", T.net_unavailable);
    return { result: "error", message: String(err) };
  }
  if (!servers.length) {
    show("direct", T.net_no_relay_configured);
    return { result: "direct" };
  }
  const candidate = await relayWorks(servers, 5000).catch(() => null);
  if (candidate) {
    show("relay", T.net_relay_ok);
    return { result: "relay", protocol: candidate.split(" ")[2] };
  }
  show("no-relay", T.net_relay_failed);
  return { result: "no-relay" };
}
