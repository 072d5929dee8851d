// The console's few behaviours: keyboard review, the live page's server-sent events and charts, verify.
"use strict";

function reviewPage() {
  const cards = () => Array.from(document.querySelectorAll("#cards .card:not(.done)"));
  const classes = Number(document.getElementById("cards").dataset.classes);
  let index = 0;
  const select = (i) => {
    const all = cards();
    if (!all.length) return;
    index = Math.max(0, Math.min(i, all.length - 1));
    document.querySelectorAll("#cards .card.selected").forEach((c) => c.classList.remove("selected"));
    all[index].classList.add("selected");
    all[index].scrollIntoView({block: "nearest"});
  };
  const objects = (card) => Array.from(card.querySelectorAll(".box")).map((b) => {
    const w = Number(card.dataset.width) / 100, h = Number(card.dataset.height) / 100, s = b.style;
    return {class_label: Number(b.dataset.label), bbox: [parseFloat(s.left) * w, parseFloat(s.top) * h,
                                                          parseFloat(s.width) * w, parseFloat(s.height) * h]};
  });
  async function answer(label) {
    const card = cards()[index];
    if (!card || card.classList.contains("sending")) return;
    card.classList.add("sending");
    const response = await fetch("/api/answers", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({sample_id: card.dataset.sampleId, label: label,
                            objects: card.dataset.scene === "1" && label !== null ? objects(card) : []})});
    card.classList.remove("sending");
    if (!response.ok) { card.querySelector(".answer").textContent = (await response.json()).error; return; }
    const body = await response.json();
    card.classList.add("done");
    card.querySelector(".answer").textContent = label === null ? "rejected" : "labeled " + label;
    document.getElementById("waiting").textContent = body.waiting;
    const answered = document.getElementById("answered");
    answered.textContent = Number(answered.textContent) + 1;
    if (!cards().length) location.reload(); else select(index);
  }
  const scene = () => { const c = cards()[index]; return c && c.dataset.scene === "1" ? c : null; };
  function nextBox(card) {
    const all = Array.from(card.querySelectorAll(".box")), k = all.findIndex((b) => b.classList.contains("on"));
    all.forEach((b, i) => b.classList.toggle("on", i === (k + 1) % all.length));
  }
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const editing = scene();
    if (editing && /^[0-9]$/.test(e.key) && Number(e.key) < classes) {  // a scene: the class of its selected box
      const b = editing.querySelector(".box.on");
      if (b) { b.dataset.label = e.key; b.querySelector("span").textContent = e.key; }
    } else if (editing && e.key === "b") nextBox(editing);
    else if (editing && e.key === "Enter") answer(Number(editing.dataset.label));
    else if (/^[0-9]$/.test(e.key) && Number(e.key) < classes) answer(Number(e.key));
    else if (e.key === "x") answer(null);
    else if (e.key === "ArrowRight" || e.key === "ArrowDown") select(index + 1);
    else if (e.key === "ArrowLeft" || e.key === "ArrowUp") select(index - 1);
    else return;
    e.preventDefault();
  });
  document.querySelectorAll("#cards .card").forEach((c) => c.addEventListener("click", () => select(cards().indexOf(c))));
  document.querySelectorAll(".box").forEach((b) => b.addEventListener("mousedown", (e) => {  // drag: move, or resize by the grip
    e.preventDefault();
    const picture = b.parentElement.getBoundingClientRect(), resize = e.target.classList.contains("grip");
    const start = {x: e.clientX, y: e.clientY, left: parseFloat(b.style.left), top: parseFloat(b.style.top),
                   width: parseFloat(b.style.width), height: parseFloat(b.style.height)};
    b.parentElement.querySelectorAll(".box").forEach((o) => o.classList.toggle("on", o === b));
    const move = (m) => {
      const dx = 100 * (m.clientX - start.x) / picture.width, dy = 100 * (m.clientY - start.y) / picture.height;
      if (resize) { b.style.width = Math.max(2, start.width + dx) + "%"; b.style.height = Math.max(2, start.height + dy) + "%"; }
      else { b.style.left = (start.left + dx) + "%"; b.style.top = (start.top + dy) + "%"; }
    };
    const up = () => { document.removeEventListener("mousemove", move); document.removeEventListener("mouseup", up); };
    document.addEventListener("mousemove", move);
    document.addEventListener("mouseup", up);
  }));
  const shown = document.getElementById("retrained");
  const show = (s) => { shown.textContent = s.error ? s.error : s.running ? `retraining with ${s.answers} answers…` :
    s.returncode === undefined ? "" : (s.returncode === 0 ? "retrained: " : "retraining failed: ") + (s.output || []).join(" "); };
  const poll = async () => { const s = await (await fetch("/api/retrain")).json(); show(s); if (s.running) setTimeout(poll, 2000); };
  document.getElementById("retrain").addEventListener("click", async () => {
    show(await (await fetch("/api/retrain", {method: "POST"})).json()); setTimeout(poll, 2000);
  });
  poll();
}

const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4d7c0f", "#be185d"];

function chart(canvas, series, unit) {
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height, pad = 28;
  g.clearRect(0, 0, w, h);
  const names = Object.keys(series), all = names.flatMap((n) => series[n]);
  if (!all.length) return;
  const top = Math.max(1e-9, ...all) * 1.1, n = Math.max(...names.map((k) => series[k].length));
  g.strokeStyle = "#ccc"; g.strokeRect(pad, 4, w - pad - 4, h - pad);
  g.fillStyle = "#555"; g.font = "11px sans-serif";
  g.fillText(top.toFixed(1) + " " + unit, 2, 12); g.fillText("0", 2, h - pad);
  names.forEach((name, k) => {
    g.strokeStyle = COLOURS[k % COLOURS.length]; g.beginPath();
    series[name].forEach((v, i) => {
      const x = pad + (w - pad - 4) * (n > 1 ? i / (n - 1) : 1), y = 4 + (h - pad - 4) * (1 - v / top);
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke(); g.fillStyle = g.strokeStyle; g.fillText(name, pad + 6 + 90 * k, h - 8);
  });
}

function livePage() {
  const rates = {}, dies = {}, keep = 120;
  const push = (store, name, value) => { (store[name] = store[name] || []).push(value); if (store[name].length > keep) store[name].shift(); };
  const cell = (v, digits) => (v === null || v === undefined) ? "–" : (typeof v === "number" ? v.toFixed(digits) : v);
  const source = new EventSource("/events");
  source.onmessage = (event) => {
    const s = JSON.parse(event.data);
    document.getElementById("clock").textContent = "updated " + new Date(s.time * 1000).toLocaleTimeString();
    document.getElementById("generators").innerHTML = Object.entries(s.generators).map(([g, v]) =>
      `<tr><td>${g}</td><td>${cell(v.rate_sps, 1)}</td><td class="n" data-generator="${g}">${v.generated}</td><td>${v.accepted}</td>` +
      `<td>${v.review}</td><td>${v.rejected}</td><td>${(100 * v.acceptance).toFixed(1)}%</td></tr>`).join("");
    document.getElementById("windows").innerHTML = s.windows.map((w) =>
      `<tr><td>${w.generator}</td><td>${w.window}</td><td>${w.n}</td><td>${cell(w.fid, 2)} / ${cell(w.fid_baseline, 2)}</td>` +
      `<td>${cell(w.recall, 2)} / ${cell(w.recall_baseline, 2)}</td><td class="${w.gate}">${w.gate}</td></tr>`).join("");
    document.getElementById("nodes").innerHTML = Object.entries(s.nodes).map(([n, v]) =>
      `<tr><td>${n}</td><td>${cell(v.die_c, 1)}</td><td>${cell(v.coolant_c, 1)}</td><td>${cell(v.power_w, 0)}</td>` +
      `<td>${v.paused ? "paused" : (v.cap_sps ? v.cap_sps + "/s" : "none")}</td></tr>`).join("");
    document.getElementById("alerts").innerHTML = s.alerts.slice(0, 5).map((a) =>
      `<li class="${a.severity}">${a.node} ${a.rule}: ${a.message}${a.cleared ? " (cleared)" : ""}</li>`).join("");
    document.getElementById("review-waiting").textContent = s.review_waiting;
    document.getElementById("human-answers").textContent = s.human_answers;
    document.getElementById("dead-letters").textContent = s.dead_letters;
    document.getElementById("lag").innerHTML = Object.entries(s.lag).map(([g, n]) => `<tr><td>${g}</td><td>${n}</td></tr>`).join("");
    Object.entries(s.generators).forEach(([g, v]) => push(rates, g, v.rate_sps));
    Object.entries(s.nodes).forEach(([n, v]) => { if (v.die_c !== undefined && v.die_c !== null) push(dies, n, v.die_c); });
    chart(document.getElementById("rate-chart"), rates, "samples/s");
    chart(document.getElementById("die-chart"), dies, "°C die");
  };
}

function historyPage() {
  document.querySelectorAll("td.ms").forEach((td) => { const v = Number(td.textContent); if (v) td.textContent = new Date(v).toLocaleString(); });
  document.getElementById("verify").addEventListener("click", async () => {
    const out = document.getElementById("verified");
    out.textContent = "verifying…";
    const r = await (await fetch("/api/verify", {method: "POST"})).json();
    out.textContent = r.error ? r.error : (r.ok ? "verified" : "BROKEN: " + r.broken) + ` (version ${r.version}, ${r.rows} rows)`;
  });
}

({review: reviewPage, live: livePage, history: historyPage})[document.body.dataset.page]();
