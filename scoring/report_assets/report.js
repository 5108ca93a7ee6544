"use strict";
// The report's behaviour, plain JS, no libraries. All user text goes in through textContent, never innerHTML.

// Any uncaught error is also shown at the top of the page, so a broken report is visible without devtools.
window.addEventListener("error", (event) => {
  const sink = document.getElementById("js-errors");
  if (!sink) return;
  sink.hidden = false;
  sink.textContent += "Report script error: " + event.message + " ";
});

const DATA = JSON.parse(document.getElementById("report-data").textContent);
const PAGE_SIZE = 20;

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function fmt(value, digits, metric) {
  return value === null || value === undefined || Number.isNaN(value) ? "n/a" : (value * DATA.scales[metric]).toFixed(digits);
}

// ---------------------------------------------------------------------------------------------- leaderboard

function rankBy(metric) {
  // Re-rank the server-rendered rows: ranked models in the metric's order, then the rest as rendered.
  const table = document.getElementById("leaderboard");
  const body = table.tBodies[0];
  const ranking = DATA.ranking[metric];
  const rows = Array.from(body.rows);
  const byName = new Map(rows.map((row) => [row.dataset.model, row]));
  const ranked = ranking.order.map((name) => byName.get(name));
  body.append(...ranked, ...rows.filter((row) => !ranking.order.includes(row.dataset.model)));
  for (const row of body.rows) {
    const cells = ranking.cells[row.dataset.model];
    const gap = row.querySelector("td.gap");
    const rank = row.querySelector("td.rank");
    rank.textContent = cells ? cells.rank : "—";
    if (cells && cells.rank_title) rank.title = cells.rank_title;
    else rank.removeAttribute("title");
    const score = row.querySelector(".rank-score");
    if (score) {
      score.textContent = cells ? cells.value : "";
      score.title = DATA.labels[metric];
    }
    gap.querySelector(".v").textContent = cells ? cells.gap : "—";
    gap.querySelector(".ci").textContent = cells ? cells.ci : "";
    gap.title = cells ? cells.title : "";
    gap.classList.toggle("sig-worse", !!(cells && cells.significant));
  }
  for (const cell of table.querySelectorAll("[data-metric]")) cell.classList.toggle("ranked", cell.dataset.metric === metric);
  for (const label of document.querySelectorAll(".rank-label")) label.textContent = DATA.labels[metric];
}

function follow(selectId, metric) {
  // The per-query, significance and sample views show the ranking metric when they have it.
  const select = document.getElementById(selectId);
  if (!select || !Array.from(select.options).some((option) => option.value === metric)) return false;
  select.value = metric;
  select.dispatchEvent(new Event("change"));
  return true;
}

function onRankChange(metric) {
  rankBy(metric);
  follow("heatmap-metric", metric);
  follow("significance-metric", metric);
  const followed = follow("score-metric", metric);
  const note = document.getElementById("score-note");
  note.hidden = followed;
  note.textContent = `${DATA.labels[metric]} has no per-sample score (a corpus statistic only)`;
}

// ---------------------------------------------------------------------------------------------- heat map

function shade(fraction) {
  // white -> blue; text stays readable because the darkest shade is still light enough for black text.
  const f = Math.max(0, Math.min(1, fraction));
  const r = Math.round(255 - 150 * f), g = Math.round(255 - 100 * f), b = 255;
  return `rgb(${r},${g},${b})`;
}

function renderHeatmap(metric) {
  const holder = document.getElementById("heatmap");
  holder.replaceChildren();
  const models = DATA.scoredModels;
  if (!models.length) {
    holder.append(el("p", { class: "note", text: "No scored model." }));
    return;
  }
  const counts = {};
  for (const sample of DATA.samples) counts[sample.q] = (counts[sample.q] || 0) + 1;
  const values = [];
  for (const name of models) {
    for (const query of DATA.queries) {
      const v = ((DATA.perQuery[name] || {})[query] || {})[metric];
      if (v !== null && v !== undefined) values.push(v);
    }
  }
  if (!values.length) {
    holder.append(el("p", { class: "note", text: `${DATA.labels[metric]}: n/a (no per-query values; see the notes under the leaderboard)` }));
    return;
  }
  const low = Math.min(...values), high = Math.max(...values);
  const head = el("tr", {}, el("th", { text: "model" }));
  DATA.queries.forEach((query, index) => {
    head.append(el("th", { class: "rot", title: `${counts[index] || 0} samples`, text: `${query} (${counts[index] || 0})` }));
  });
  const table = el("table", {}, el("thead", {}, head));
  const body = el("tbody");
  for (const name of models) {
    const row = el("tr", {}, el("th", { text: name }));
    for (const query of DATA.queries) {
      const v = ((DATA.perQuery[name] || {})[query] || {})[metric];
      const cell = el("td", { class: "cell", text: fmt(v, 1, metric), title: `${name} · ${query}` });
      if (v !== null && v !== undefined) cell.style.background = shade(high > low ? (v - low) / (high - low) : 0.5);
      row.append(cell);
    }
    body.append(row);
  }
  table.append(body);
  holder.append(table);
}

// ---------------------------------------------------------------------------------------------- significance

function showSignificance(metric) {
  // The matrices are rendered in the page, one per metric; show the chosen one.
  for (const block of document.querySelectorAll(".sig-block")) block.hidden = block.dataset.metric !== metric;
}

function showGroups(metric) {
  for (const block of document.querySelectorAll(".group-block")) block.hidden = block.dataset.metric !== metric;
}

// ---------------------------------------------------------------------------------------------- sample browser

const browser = { page: 0, rows: [], metricIndex: 0 };
let searchTexts = null; // lower-cased text per sample, built on the first search

function sampleScores(sample, metricIndex) {
  return sample.score.map((s) => (s === null ? null : s[metricIndex]));
}

function stats(sample, metricIndex) {
  const present = sampleScores(sample, metricIndex).filter((v) => v !== null);
  if (!present.length) return { mean: null, spread: null };
  const mean = present.reduce((x, y) => x + y, 0) / present.length;
  const spread = present.length < 2 ? null : Math.sqrt(present.reduce((x, y) => x + (y - mean) ** 2, 0) / present.length);
  return { mean, spread };
}

function sortOptions() {
  const options = [
    ["file", "file order"],
    ["spread-desc", "disagreement between models (most first)"],
    ["spread-asc", "disagreement between models (least first)"],
    ["mean-asc", "mean score (lowest first)"],
    ["mean-desc", "mean score (highest first)"],
  ];
  DATA.models.forEach((name, index) => {
    options.push([`model-${index}-asc`, `${name} score (lowest first)`]);
    options.push([`model-${index}-desc`, `${name} score (highest first)`]);
  });
  return options;
}

function applyFilters() {
  const queryIndex = document.getElementById("filter-query").value;
  const text = document.getElementById("filter-text").value.trim().toLowerCase();
  const sort = document.getElementById("sort-order").value;
  const metricIndex = DATA.sampleMetrics.indexOf(document.getElementById("score-metric").value);
  browser.metricIndex = metricIndex;
  if (text && searchTexts === null) {
    searchTexts = DATA.samples.map((s) =>
      [DATA.queries[s.q], s.id, ...s.refs, ...s.pred.map((p) => p || "")].join("\n").toLowerCase(),
    );
  }
  let rows = [];
  DATA.samples.forEach((sample, index) => {
    if (queryIndex !== "" && String(sample.q) !== queryIndex) return;
    if (text && !searchTexts[index].includes(text)) return;
    rows.push(index);
  });
  if (sort !== "file") {
    const key = sort.startsWith("model-")
      ? (() => {
          const model = parseInt(sort.split("-")[1], 10);
          return (sample) => {
            const s = sample.score[model];
            return s === null ? null : s[metricIndex];
          };
        })()
      : sort.startsWith("spread")
        ? (sample) => stats(sample, metricIndex).spread
        : (sample) => stats(sample, metricIndex).mean;
    const descending = sort.endsWith("-desc");
    const keyed = rows.map((index) => [index, key(DATA.samples[index])]);
    keyed.sort((a, b) => {
      if (a[1] === null && b[1] === null) return a[0] - b[0];
      if (a[1] === null) return 1; // samples without a value go last either way
      if (b[1] === null) return -1;
      return descending ? b[1] - a[1] : a[1] - b[1];
    });
    rows = keyed.map((pair) => pair[0]);
  }
  browser.rows = rows;
  browser.page = 0;
  renderPage();
}

function renderSample(sample) {
  const metricIndex = browser.metricIndex;
  const side = el("div", { class: "side" });
  if (sample.img) {
    side.append(el("img", { src: sample.img, loading: "lazy", alt: "panorama thumbnail", width: "256", height: "128" }));
  } else {
    side.append(el("div", { class: "noimg", text: "no thumbnail" }));
  }
  side.append(el("div", {}, el("span", { class: "query", text: DATA.queries[sample.q] })));
  side.append(el("div", { class: "sid", text: sample.id }));
  const { mean, spread } = stats(sample, metricIndex);
  const shown = DATA.sampleMetrics[metricIndex];
  const label = DATA.labels[shown];
  side.append(el("div", { class: "spread", text: `${label}: mean ${fmt(mean, 1, shown)}, spread ${fmt(spread, 1, shown)}` }));

  const refs = el("ol", { class: "refs" });
  for (const ref of sample.refs) refs.append(el("li", { text: ref }));
  const scores = sampleScores(sample, metricIndex);
  const best = Math.max(...scores.filter((v) => v !== null));
  const preds = el("div", { class: "preds" });
  DATA.models.forEach((name, index) => {
    const score = scores[index];
    const error = sample.err ? sample.err[index] : null;
    const top = score !== null && DATA.models.length > 1 && score === best && best > 0;
    const card = el("div", { class: top ? "pred top" : "pred", "data-model": name });
    const all = sample.score[index];
    const tooltip = all ? DATA.sampleMetrics.map((m, i) => `${DATA.labels[m]} ${fmt(all[i], 1, m)}`).join(" · ") : "";
    card.append(el("div", { class: "who" }, el("span", { text: name }), el("span", { class: "score", title: tooltip, text: fmt(score, 1, shown) })));
    const prediction = sample.pred[index];
    card.append(el("div", { class: "text", text: prediction === null ? "" : prediction === "" ? "(empty)" : prediction }));
    if (error) card.append(el("div", { class: "err", text: error }));
    preds.append(card);
  });
  return el("div", { class: "sample", "data-sample": sample.id }, side, el("div", {}, refs, preds));
}

function renderPage() {
  const holder = document.getElementById("samples");
  const pages = Math.max(1, Math.ceil(browser.rows.length / PAGE_SIZE));
  browser.page = Math.max(0, Math.min(browser.page, pages - 1));
  const start = browser.page * PAGE_SIZE;
  const slice = browser.rows.slice(start, start + PAGE_SIZE);
  holder.replaceChildren(...slice.map((index) => renderSample(DATA.samples[index])));
  if (!slice.length) holder.append(el("p", { class: "note", text: "No sample matches." }));
  document.getElementById("page-info").textContent = browser.rows.length
    ? `${start + 1}–${start + slice.length} of ${browser.rows.length} (page ${browser.page + 1}/${pages})`
    : "0 of 0";
  document.getElementById("page-prev").disabled = browser.page === 0;
  document.getElementById("page-next").disabled = browser.page >= pages - 1;
}

function setUpBrowser() {
  const querySelect = document.getElementById("filter-query");
  const counts = {};
  for (const sample of DATA.samples) counts[sample.q] = (counts[sample.q] || 0) + 1;
  querySelect.append(el("option", { value: "", text: `all queries (${DATA.samples.length})` }));
  DATA.queries.forEach((query, index) => querySelect.append(el("option", { value: String(index), text: `${query} (${counts[index] || 0})` })));
  const sortSelect = document.getElementById("sort-order");
  for (const [value, text] of sortOptions()) sortSelect.append(el("option", { value, text }));
  let timer = null;
  document.getElementById("filter-text").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(applyFilters, 150); // typing stays smooth: filter once the user pauses
  });
  for (const id of ["filter-query", "score-metric", "sort-order"]) {
    document.getElementById(id).addEventListener("change", applyFilters);
  }
  document.getElementById("page-prev").addEventListener("click", () => {
    browser.page -= 1;
    renderPage();
  });
  document.getElementById("page-next").addEventListener("click", () => {
    browser.page += 1;
    renderPage();
  });
  applyFilters();
}

// ---------------------------------------------------------------------------------------------- start

function main() {
  const rankSelect = document.getElementById("rank-metric");
  rankSelect.addEventListener("change", () => onRankChange(rankSelect.value));
  const heatmapSelect = document.getElementById("heatmap-metric");
  heatmapSelect.addEventListener("change", () => renderHeatmap(heatmapSelect.value));
  renderHeatmap(heatmapSelect.value);
  const significanceSelect = document.getElementById("significance-metric");
  significanceSelect.addEventListener("change", () => showSignificance(significanceSelect.value));
  const groupSelect = document.getElementById("group-metric"); // only when the data file has groups
  if (groupSelect) groupSelect.addEventListener("change", () => showGroups(groupSelect.value));
  setUpBrowser();
  document.body.dataset.ready = "1";
}

main();
