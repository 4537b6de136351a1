// How a call's end is told: role-aware failure texts from callFailed's reason and detail,
// and the events an embedding page (the MIS's patient cabinet) follows via postMessage.

// The participant a watchdog detail is about, and which way media did not go. The detail
// names participants by id ("no audio from pat-1's browser reached the media server
// (direction from-browser, ...)"); the earliest id named is the one it is about.
export function parseDetail(detail, ids) {
  const text = String(detail || "");
  const direction = (text.match(/direction ([a-z-]+)/) || [])[1] || null;
  let who = null;
  let at = Infinity;
  for (const id of ids) {
    const found = text.search(new RegExp(`(^|[^\\w-])${id.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}([^\\w-]|$)`));
    if (found >= 0 && found < at) { at = found; who = id; }
  }
  return { who, direction };
}

// The sentence for a failed call. A no-media failure on our own side tells us what to do
// (another network); one on someone else's side tells what happened to them.
export function failureText(T, { role, me, names, reason, detail }) {
  if (role === "consultant" && reason === "declined") return T.declined_by_you;
  if (role === "consultant" && reason === "ring-timeout") return T.ring_missed;
  if (reason === "no-media") {
    const { who } = parseDetail(detail, [me, ...names.keys()].filter(Boolean));
    if (who && who !== me) {
      const name = names.get(who) || who;
      const key = role === "patient" ? "failed_no_media_other" : "failed_no_media_patient";
      return T[key].replace("{name}", name);
    }
  }
  const key = {
    "no-media": "failed_no_media", "media-server-lost": "failed_media_server",
    "recording-failed": "failed_recording", "declined": "failed_declined",
    "ring-timeout": "failed_ring_timeout", "turn-exhausted": "failed_turn",
    "shutdown": "failed_shutdown",
  }[reason];
  return T[key || "failed_other"];
}

// The embedding page's origin, if it is one the service lets frame us; null when the page
// is not framed or the framer is not allowed (it then hears nothing).
function parentOrigin(allowed) {
  if (window.parent === window || !allowed.length) return null;
  const ancestors = window.location.ancestorOrigins;
  if (ancestors && ancestors.length) return allowed.includes(ancestors[0]) ? ancestors[0] : null;
  try {
    const origin = document.referrer ? new URL(document.referrer).origin : null;
    if (origin && allowed.includes(origin)) return origin;
  } catch (err) { /* no usable referrer */ }
  return allowed.length === 1 ? allowed[0] : null;
}

// Sends {source: "telemed", event, ...data} to the embedding page, once per event name
// (a reconnect does not announce "joined" twice).
export function makeNotifier(allowed) {
  const target = parentOrigin(allowed);
  const sent = new Set();
  return (event, data = {}) => {
    if (!target || sent.has(event)) return;
    sent.add(event);
    window.parent.postMessage({ source: "telemed", event, ...data }, target);
  };
}
