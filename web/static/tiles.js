// What each tile shows besides the picture: a placeholder with the name when there is no
// picture (audio only, camera off), and microphone-off / camera-off badges.
//
// Whether someone's camera or microphone is off is read from what arrives: a disabled
// video track sends black frames, a disabled microphone digital silence (audio level 0).
// A `participantMedia` event from the server, when there is one, wins over the guess.

const probe = document.createElement("canvas");
probe.width = 16;
probe.height = 12;
const ink = probe.getContext("2d", { willReadFrequently: true });

// True when the video shows only black (a disabled track's frames); null when it has no
// frame to judge yet.
export function looksBlack(video) {
  if (!video || video.readyState < 2 || !video.videoWidth) return null;
  ink.drawImage(video, 0, 0, probe.width, probe.height);
  const { data } = ink.getImageData(0, 0, probe.width, probe.height);
  let brightest = 0;
  for (let i = 0; i < data.length; i += 4) brightest = Math.max(brightest, data[i], data[i + 1], data[i + 2]);
  return brightest < 8;
}

// Sets a tile's badges and placeholder. `audio`/`video`: true (on), false (off), or
// undefined (leave as it is).
export function showMedia(fig, T, { audio, video }) {
  if (!fig) return;
  if (audio !== undefined) fig.dataset.mic = audio ? "on" : "off";
  if (video !== undefined) fig.dataset.camera = video ? "on" : "off";
  const badges = fig.querySelector(".tile-badges");
  const off = [];
  if (fig.dataset.mic === "off") off.push(T.tile_muted);
  if (fig.dataset.camera === "off") off.push(T.tile_camera_off);
  badges.textContent = "";
  for (const text of off) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = text;
    badges.appendChild(badge);
  }
  badges.hidden = off.length === 0;
  fig.classList.toggle("no-picture", fig.dataset.camera === "off");
}

// The parts every tile has: picture, placeholder (initial and name), name, badges, note.
export function tileParts(fig, name, video) {
  const placeholder = document.createElement("div");
  placeholder.className = "placeholder";
  placeholder.setAttribute("aria-hidden", "true");
  const initial = document.createElement("span");
  initial.className = "initial";
  initial.textContent = (name || "?").trim().charAt(0).toUpperCase();
  placeholder.append(initial);
  const caption = document.createElement("figcaption");
  caption.textContent = name;
  const badges = document.createElement("span");
  badges.className = "tile-badges";
  badges.setAttribute("role", "status");
  badges.hidden = true;
  fig.append(video, placeholder, caption, badges);
}
