// cytostore serve: the little JavaScript the pages need (no build step).
"use strict";

function selectedCellIds() {
  const bar = document.querySelector(".tagbar[data-cell-ids]");
  if (bar) return bar.dataset.cellIds.split(",").map(Number);
  return Array.from(document.querySelectorAll("input.select-cell:checked")).map((c) => Number(c.value));
}

async function postTags(body) {
  // The server's only write: POST /api/tags (JSON, same origin); returns [response, its JSON].
  const resp = await fetch("/api/tags", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  return [resp, await resp.json()];
}

async function changeTags(which) {
  const status = document.getElementById("tag-status");
  const tag = document.getElementById("tag").value.trim();
  const ids = selectedCellIds();
  if (!tag) { status.textContent = "Type a tag first."; return; }
  if (!ids.length) { status.textContent = "Select cells first (their checkboxes)."; return; }
  const body = { cell_ids: ids, add: which === "add" ? [tag] : [], remove: which === "remove" ? [tag] : [] };
  status.textContent = "…";
  try {
    const [resp, data] = await postTags(body);
    if (!resp.ok) { status.textContent = "Error: " + data.error; status.className = "error"; return; }
    status.className = "";
    status.textContent = `${data.cells} cells: ${data.added} tags added, ${data.removed} removed`;
  } catch (err) {
    status.textContent = "Error: " + err;
  }
}

async function markReviewed(button) {
  // The review queue: tag the cell "reviewed" plus its verdict (label-ok / label-wrong).
  const row = button.closest(".issue");
  const status = document.getElementById("review-status");
  const verdict = button.dataset.verdict;
  const other = Array.from(row.querySelectorAll("button.mark")).map((b) => b.dataset.verdict).filter((v) => v !== verdict);
  const body = { cell_ids: [Number(row.dataset.cellId)], add: ["reviewed", verdict], remove: other };
  try {
    const [resp, data] = await postTags(body);
    if (!resp.ok) { status.textContent = "Error: " + data.error; status.className = "error"; return; }
    row.classList.add("reviewed");
    row.querySelector(".tags").textContent = ["reviewed", verdict].join(", ");
    status.className = "";
    status.textContent = `cell ${row.dataset.cellId}: ${verdict}`;
  } catch (err) {
    status.textContent = "Error: " + err;
  }
}

function drawScaleBar() {
  const img = document.getElementById("cell-image");
  const bar = document.getElementById("scale-bar");
  if (!img || !bar) return;
  const um = parseFloat(img.dataset.umPerPx);
  if (!(um > 0) || !img.naturalWidth) { bar.style.display = "none"; return; }
  const shown = img.clientWidth / img.naturalWidth;          // screen px per image px
  const candidates = [1, 2, 5, 10, 20, 50];
  const fieldUm = img.naturalWidth * um;
  const len = candidates.filter((c) => c <= fieldUm / 3).pop() || candidates[0];
  bar.style.width = (len / um) * shown + "px";
  bar.title = len + " µm";
  bar.textContent = "";
  const label = document.createElement("span");
  label.textContent = len + " µm";
  bar.appendChild(label);
}

document.addEventListener("DOMContentLoaded", () => {
  const add = document.getElementById("add-tag");
  const remove = document.getElementById("remove-tag");
  if (add) add.addEventListener("click", () => changeTags("add"));
  if (remove) remove.addEventListener("click", () => changeTags("remove"));
  const model = document.querySelector("#nn-form #model");
  if (model) model.addEventListener("change", () => model.form.submit());
  document.querySelectorAll(".issue button.mark").forEach((b) => b.addEventListener("click", () => markReviewed(b)));
  const img = document.getElementById("cell-image");
  if (img) { if (img.complete) drawScaleBar(); else img.addEventListener("load", drawScaleBar); }
});
