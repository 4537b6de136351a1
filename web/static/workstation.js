// The workstation: lists the calls (rendered by the server), refreshes the list, and for a
// consultant keeps one socket per referral so that the doctor's ring reaches this page.
const $ = (id) => document.getElementById(id);
// Strings and rings come in data attributes: the page's policy runs no inline script.
const T = JSON.parse($("workstation").dataset.strings);
const RINGS = JSON.parse($("workstation").dataset.rings);
const REFRESH_MS = 20000;
let ringing = null;
let countdown = null;

function listen({ call, token, link }) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/ws`, ["telemed.v1"]);
  let nextId = 1;
  const pending = new Map();
  const request = (type, fields = {}) => new Promise((resolve, reject) => {
    const id = nextId++;
    pending.set(id, { resolve, reject });
    ws.send(JSON.stringify({ type, id, ...fields }));
  });
  ws.onopen = () => request("hello", { token }).then(() => { $("ws-online").hidden = false; }).catch(() => {});
  ws.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    if (msg.re !== undefined && pending.has(msg.re)) {
      const { resolve, reject } = pending.get(msg.re);
      pending.delete(msg.re);
      if (msg.type === "error") reject(Object.assign(new Error(msg.message), { code: msg.code }));
      else resolve(msg);
      return;
    }
    if (msg.type === "incomingCall") ring({ call, msg, request, link });
    else if (["ringCancelled", "ringTimeout", "callEnded", "callFailed"].includes(msg.type)
             && ringing && ringing.call === call) {
      stop(msg.type === "ringCancelled" ? T.ring_cancelled : T.ring_missed);
    }
  };
}

function ring(entry) {
  ringing = entry;
  $("ring-text").textContent = `${T.ring_incoming}: ${entry.msg.caller.name}`;
  $("ring").hidden = false;
  $("ws-note").hidden = true;
  $("accept").disabled = $("decline").disabled = false;
  $("accept").focus();
  document.body.dataset.callState = "ringing";
  let left = Math.round(entry.msg.timeout);
  const tick = () => { $("ring-countdown").textContent = `${T.ring_answer_within} ${left} ${T.unit_s}`; left -= 1; };
  tick();
  countdown = setInterval(() => { if (left >= 0) tick(); }, 1000);
}

function stop(note) {
  clearInterval(countdown);
  ringing = null;
  $("ring").hidden = true;
  document.body.dataset.callState = "waiting";
  if (note) { $("ws-note").textContent = note; $("ws-note").hidden = false; }
}

$("accept").addEventListener("click", async () => {
  if (!ringing) return;
  const { request, link } = ringing;
  $("accept").disabled = $("decline").disabled = true;
  try {
    await request("accept");
    // The call page joins on its own: the consultant already said yes.
    location.href = `${link}?answered=1`;
  } catch (err) {
    stop(T.ring_missed);
  }
});
$("decline").addEventListener("click", async () => {
  if (!ringing) return;
  const { request } = ringing;
  try { await request("decline"); } catch (err) { /* over either way */ }
  stop(T.declined_by_you);
});

for (const entry of RINGS) listen(entry);
document.body.dataset.callState = "waiting";
// New calls from the MIS appear without a click; never while a ring is on screen.
setInterval(() => { if (!ringing) location.reload(); }, REFRESH_MS);
