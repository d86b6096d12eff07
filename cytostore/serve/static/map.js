// cytostore serve: the map page (a scatter on a canvas; no build step).
// Points come from /api/curation/maps/RUN?color=COLUMN. Click a point: its cell page.
// Drag a box: the grid of the cells inside it (/curation/maps/RUN/cells?x0=..., which
// turns the box into the grid's sandboxed filter, so the selection has a URL).
"use strict";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
  "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#ad494a"];
const OTHER = "#c7c7c7";
const PAD = 12;

function ramp(t) {  // viridis-like, t in 0..1
  const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const x = Math.min(Math.max(t, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2);
  const f = x - i;
  const c = stops[i].map((v, j) => Math.round(v + f * (stops[i + 1][j] - v)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

async function drawMap() {
  const canvas = document.getElementById("map");
  if (!canvas) return;
  const status = document.getElementById("map-status");
  const run = canvas.dataset.run;
  const color = canvas.dataset.color;
  const url = `/api/curation/maps/${encodeURIComponent(run)}` + (color ? `?color=${encodeURIComponent(color)}` : "");
  const resp = await fetch(url, { credentials: "same-origin" });
  const d = await resp.json();
  if (!resp.ok) { status.textContent = "Error: " + d.error; status.className = "error"; return; }
  const n = d.cell_id.length;
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let i = 0; i < n; i++) {
    x0 = Math.min(x0, d.x[i]); x1 = Math.max(x1, d.x[i]);
    y0 = Math.min(y0, d.y[i]); y1 = Math.max(y1, d.y[i]);
  }
  if (!(x1 > x0)) { x0 -= 1; x1 += 1; }
  if (!(y1 > y0)) { y0 -= 1; y1 += 1; }
  const w = canvas.width, h = canvas.height;
  const sx = (x) => PAD + ((x - x0) / (x1 - x0)) * (w - 2 * PAD);
  const sy = (y) => h - PAD - ((y - y0) / (y1 - y0)) * (h - 2 * PAD);
  const ux = (px) => x0 + ((px - PAD) / (w - 2 * PAD)) * (x1 - x0);
  const uy = (py) => y0 + ((h - PAD - py) / (h - 2 * PAD)) * (y1 - y0);
  let lo = Infinity, hi = -Infinity;
  if (d.kind === "number") {
    for (const v of d.value) if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  }
  const colorOf = (i) => {
    if (d.kind === "category") return d.value[i] >= 0 ? PALETTE[d.value[i] % PALETTE.length] : OTHER;
    if (d.kind === "number") return d.value[i] === null ? OTHER : ramp(hi > lo ? (d.value[i] - lo) / (hi - lo) : 0.5);
    return "#23395d";
  };
  const px = new Float32Array(n), py = new Float32Array(n);
  const radius = n > 20000 ? 1.2 : n > 2000 ? 2 : 3.5;
  const ctx = canvas.getContext("2d");
  const paint = () => {
    ctx.clearRect(0, 0, w, h);
    ctx.globalAlpha = n > 20000 ? 0.5 : 0.85;
    for (let i = 0; i < n; i++) {
      px[i] = sx(d.x[i]); py[i] = sy(d.y[i]);
      ctx.fillStyle = colorOf(i);
      ctx.beginPath(); ctx.arc(px[i], py[i], radius, 0, 2 * Math.PI); ctx.fill();
    }
    ctx.globalAlpha = 1;
  };
  paint();
  window.cytostoreMap = { ids: d.cell_id, px, py, toData: (a, b) => [ux(a), uy(b)] };  // for tests and the console
  canvas.dataset.points = String(n);
  const legend = document.getElementById("map-legend");
  legend.textContent = "";
  const item = (swatch, text) => {
    const div = document.createElement("div");
    const s = document.createElement("span"); s.className = "swatch"; s.style.background = swatch;
    div.appendChild(s); div.appendChild(document.createTextNode(text)); legend.appendChild(div);
  };
  if (d.kind === "category") {
    d.categories.forEach((c, i) => item(PALETTE[i % PALETTE.length], c));
    if (d.value.some((v) => v < 0)) item(OTHER, "other / missing");
  } else if (d.kind === "number" && hi >= lo) {
    [0, 0.25, 0.5, 0.75, 1].forEach((t) => item(ramp(t), (lo + t * (hi - lo)).toPrecision(3)));
  }
  const nearest = (mx, my) => {
    let best = -1, bestD = 64;  // within 8 px
    for (let i = 0; i < n; i++) {
      const dd = (px[i] - mx) ** 2 + (py[i] - my) ** 2;
      if (dd < bestD) { bestD = dd; best = i; }
    }
    return best;
  };
  const pos = (ev) => {
    const r = canvas.getBoundingClientRect();
    return [(ev.clientX - r.left) * (w / r.width), (ev.clientY - r.top) * (h / r.height)];
  };
  let start = null;
  canvas.addEventListener("mousedown", (ev) => { start = pos(ev); });
  canvas.addEventListener("mousemove", (ev) => {
    const [mx, my] = pos(ev);
    if (start) {
      paint();
      ctx.strokeStyle = "#000"; ctx.setLineDash([4, 3]);
      ctx.strokeRect(start[0], start[1], mx - start[0], my - start[1]);
      ctx.setLineDash([]);
      return;
    }
    const i = nearest(mx, my);
    canvas.title = i < 0 ? "" : `cell ${d.cell_id[i]}` + (d.kind ? ` · ${d.kind === "category" ? (d.categories[d.value[i]] ?? "other") : d.value[i]}` : "");
  });
  canvas.addEventListener("mouseup", (ev) => {
    const [mx, my] = pos(ev);
    const from = start; start = null;
    if (!from) return;
    if (Math.abs(mx - from[0]) < 4 && Math.abs(my - from[1]) < 4) {  // a click
      const i = nearest(mx, my);
      if (i >= 0) window.location.href = `/cells/${d.cell_id[i]}`;
      return;
    }
    const q = new URLSearchParams({ x0: ux(from[0]), x1: ux(mx), y0: uy(from[1]), y1: uy(my) });
    window.location.href = `/curation/maps/${encodeURIComponent(run)}/cells?${q}`;
  });
  status.textContent = `${n} points drawn`;
}

document.addEventListener("DOMContentLoaded", () => {
  const color = document.querySelector("form.filter #color");
  if (color && document.getElementById("map")) color.addEventListener("change", () => color.form.submit());
  drawMap();
});
