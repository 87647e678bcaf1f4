// The transcript page: words seek the player and follow it; segments and speakers are
// corrected in place, each save a new revision (a stale revision is refused by the server).
(function () {
  "use strict";
  const box = document.getElementById("transcript");
  if (!box) return;
  const media = document.getElementById("media");
  const key = box.dataset.key;
  const api = "/api/transcripts/" + key.split("/").map(encodeURIComponent).join("/");
  const message = document.getElementById("message");
  const author = document.getElementById("author");
  author.value = localStorage.getItem("asr-author") || "";
  author.addEventListener("change", () => localStorage.setItem("asr-author", author.value));
  let revision = parseInt(box.dataset.revision, 10);
  let version = box.dataset.version;

  function say(text, bad) {
    message.textContent = text;
    message.className = bad ? "bad" : "ok";
  }

  // -- following the player ---------------------------------------------------------------
  let words = Array.from(box.querySelectorAll(".w"));
  let starts = words.map((w) => parseFloat(w.dataset.s));
  let current = null;
  function index() {
    words = Array.from(box.querySelectorAll(".w"));
    starts = words.map((w) => parseFloat(w.dataset.s));
  }
  function highlight(t) {
    let lo = 0, hi = starts.length - 1, found = -1;
    while (lo <= hi) {  // the last word that starts at or before t
      const mid = (lo + hi) >> 1;
      if (starts[mid] <= t + 1e-3) { found = mid; lo = mid + 1; } else { hi = mid - 1; }
    }
    // the word until the next one starts (at most 2 s: not across a long pause)
    const until = found + 1 < starts.length ? Math.min(starts[found + 1], starts[found] + 2) : starts[found] + 2;
    const w = found >= 0 && t < until ? words[found] : null;
    if (w === current) return;
    if (current) current.classList.remove("now");
    current = w;
    if (w) {
      w.classList.add("now");
      const r = w.getBoundingClientRect();
      if (r.top < 80 || r.bottom > window.innerHeight - 20) w.scrollIntoView({ block: "center" });
    }
  }
  function seek(t) {
    if (!media) return;
    media.currentTime = t;
    highlight(t);
  }
  if (media) {
    media.addEventListener("timeupdate", () => highlight(media.currentTime));
    media.addEventListener("seeked", () => highlight(media.currentTime));
    const start = parseFloat(box.dataset.start || "0");
    if (start > 0) {
      const go = () => seek(start);
      if (media.readyState >= 1) go(); else media.addEventListener("loadedmetadata", go, { once: true });
    }
  }
  box.addEventListener("click", (e) => {
    const w = e.target.closest(".w, .ts");
    if (!w || w.closest(".editing")) return;
    e.preventDefault();
    seek(parseFloat(w.dataset.s));
    if (media) media.play().catch(() => {});
  });

  // -- corrections ----------------------------------------------------------------------------
  async function post(path, body) {
    body.base_version = version;
    body.author = author.value;
    let r, data;
    try {
      r = await fetch(api + path, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      data = await r.json();
    } catch (err) {
      say("not saved: " + (r ? r.status + " " + r.statusText : err), true);
      return null;
    }
    if (!r.ok) {
      say("not saved: " + (data.error || r.statusText), true);
      return null;
    }
    revision = data.revision;
    version = data.version;
    box.dataset.revision = revision;
    box.dataset.version = version;
    document.getElementById("revision").textContent = revision;
    document.getElementById("review-state").textContent = data.transcript.review.state;
    say("saved as revision " + revision);
    return data.transcript;
  }

  function render(span, seg) {  // a segment's words after a save, as the server timed them
    span.textContent = "";
    for (const w of seg.words) {
      const el = document.createElement("span");
      el.className = "w c" + Math.min(Math.floor(w.probability * 10), 9);
      el.dataset.s = w.start;
      el.textContent = w.word;
      span.appendChild(el);
    }
    if (!seg.words.length) span.textContent = seg.text;
    index();
  }

  box.addEventListener("click", async (e) => {
    const button = e.target.closest("button.edit");
    if (!button) return;
    const div = button.closest(".seg");
    const span = div.querySelector(".text");
    if (!div.classList.contains("editing")) {
      div.classList.add("editing");
      span.dataset.words = span.innerHTML;  // the timed word spans, for Escape
      span.textContent = span.textContent.trim();
      span.contentEditable = "true";
      span.focus();
      button.textContent = "save";
      return;
    }
    const text = span.textContent.replace(/\s+/g, " ").trim();
    const t = await post("/segments/" + div.dataset.seg, { text: text });
    if (!t) return;  // not saved: the typed text stays, in edit mode, beside the message
    span.contentEditable = "false";
    div.classList.remove("editing");
    button.textContent = "edit";
    render(span, t.segments.find((s) => String(s.id) === div.dataset.seg));
  });
  box.addEventListener("keydown", (e) => {
    if (e.key !== "Escape" || !e.target.isContentEditable) return;
    const div = e.target.closest(".seg");  // Escape: give up the edit, the words come back
    const span = div.querySelector(".text");
    span.contentEditable = "false";
    div.classList.remove("editing");
    div.querySelector("button.edit").textContent = "edit";
    span.innerHTML = span.dataset.words;
    index();
  });
  box.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && e.target.isContentEditable) {
      e.preventDefault();
      e.target.closest(".seg").querySelector("button.edit").click();
    }
  });

  for (const b of document.querySelectorAll("button.rename")) {
    b.addEventListener("click", async () => {
      const name = prompt("Name for " + b.dataset.speaker, b.dataset.speaker);
      if (!name || name === b.dataset.speaker) return;
      const t = await post("/speakers", { old: b.dataset.speaker, new: name });
      if (t) location.reload();
    });
  }
  document.getElementById("mark-reviewed").addEventListener("click", () => post("/review", { state: "reviewed" }));
})();
