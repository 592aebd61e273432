// The dashboard's live parts: poll the JSON endpoints and put text where it goes (textContent only:
// nothing the server sends is ever parsed as HTML).
"use strict";

const POLL_MS = 1500;

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function pageData() {
  const node = document.getElementById("page-data");
  return node ? JSON.parse(node.textContent) : {};
}

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${response.status}`);
  return response.json();
}

// Calls fn every POLL_MS until it returns false (a failed call is tried again at the next tick).
function poll(fn) {
  const tick = async () => {
    let again = true;
    try { again = (await fn()) !== false; } catch (err) { /* the next poll tries again */ }
    if (again) setTimeout(tick, POLL_MS);
  };
  setTimeout(tick, POLL_MS);
}

function statusBadge(status) {
  return el("span", status, `status s-${status}`);
}

function bar(percent) {
  const outer = el("div", null, "bar");
  const inner = el("span");
  inner.style.width = `${Number(percent) || 0}%`;
  outer.append(inner);
  return outer;
}

// jobs page

function jobRow(j) {
  const tr = el("tr");
  tr.dataset.job = j.id;
  const status = el("td"); status.append(statusBadge(j.status));
  const name = el("td"); const link = el("a", j.name); link.href = j.url; name.append(link, el("div", j.id, "id"));
  const progress = el("td");
  const count = el("div", null, "count");
  count.append(el("span", j.processed, "processed"), document.createTextNode(` / ${j.total}`));
  progress.append(bar(j.percent), count);
  tr.append(status, name, el("td", j.model), el("td", j.tenant), el("td", j.api), progress,
    el("td", j.rate, "num rate"), el("td", j.errors, "num"), el("td", j.cost, "num"), el("td", j.submitted));
  return tr;
}

function jobsPage() {
  const wanted = pageData();
  const query = new URLSearchParams();
  for (const key of ["status", "model", "after"]) if (wanted[key]) query.set(key, wanted[key]);
  poll(async () => {
    const data = await getJSON(`/ui/api/jobs?${query}`);
    const body = document.getElementById("jobs");
    const rows = data.jobs.map(jobRow);
    if (!rows.length) { const tr = el("tr", null, "empty"); const td = el("td", "No jobs."); td.colSpan = 10; tr.append(td); rows.push(tr); }
    body.replaceChildren(...rows);
    const more = document.getElementById("more");
    more.hidden = !data.more;
    if (data.more) {
      const next = new URLSearchParams(query); next.set("after", data.more);
      document.getElementById("more-link").href = `/ui?${next}`;
    }
  });
}

// job page

function chart(svg, series) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 800, H = 200, PAD = 4;
  const scale = document.getElementById("chart-scale");
  const none = series.length < 2;
  svg.replaceChildren();
  svg.classList.toggle("none", none);
  document.getElementById("chart-legend").classList.toggle("none", none);
  if (none) {
    scale.textContent = "No throughput samples of this job on this server (they are taken each second while it runs here).";
    return;
  }
  const t0 = series[0][0], t1 = series[series.length - 1][0];
  const top = Math.max(1, ...series.map((p) => p[1])) * 1.1;
  const x = (t) => PAD + ((t - t0) / Math.max(1e-9, t1 - t0)) * (W - 2 * PAD);
  const line = (value, cls) => {
    const path = document.createElementNS(NS, "polyline");
    path.setAttribute("points", series.map((p) => `${x(p[0]).toFixed(1)},${(H - PAD - value(p) * (H - 2 * PAD)).toFixed(1)}`).join(" "));
    path.setAttribute("class", cls);
    svg.append(path);
  };
  line((p) => p[1] / top, "rps");
  line((p) => p[2], "err");
  scale.textContent = `top of the chart: ${top.toFixed(1)} records/s and 100% errors; ${Math.round(t1 - t0)} s shown`;
}

function fillRows(body, rows, columns, empty) {
  const trs = rows.map((row) => { const tr = el("tr"); for (const c of columns) tr.append(el("td", row[c])); return tr; });
  if (!trs.length) { const tr = el("tr", null, "empty"); const td = el("td", empty); td.colSpan = columns.length; tr.append(td); trs.push(tr); }
  body.replaceChildren(...trs);
}

function showJob(job) {
  for (const node of document.querySelectorAll("[data-field]")) {
    const value = job[node.dataset.field];
    if (value !== undefined) node.textContent = String(value);
  }
  document.getElementById("status").className = `status s-${job.status}`;
  document.getElementById("bar").style.width = `${Number(job.percent) || 0}%`;
  document.getElementById("stop").hidden = !job.stoppable;
  chart(document.getElementById("chart"), job.series);
  fillRows(document.getElementById("timeline"), job.timeline, ["at", "event", "status", "reason"], "");
  document.getElementById("provider-jobs-section").hidden = !job.provider_jobs.length;
  fillRows(document.getElementById("provider-jobs"), job.provider_jobs,
    ["id", "attempt", "status", "progress", "created", "ended"], "");
  fillRows(document.getElementById("error-samples"), job.error_samples, ["record", "error"],
    job.ended_now ? "None." : "None yet: read from the outputs once the job ends.");
  const outputs = document.getElementById("outputs");
  const items = job.outputs.map((o) => { const li = el("li"); const a = el("a", o.name); a.href = o.url; li.append(a, document.createTextNode(" "), el("span", o.size, "id")); return li; });
  if (!items.length) items.push(el("li", "Written when the job ends.", "empty"));
  outputs.replaceChildren(...items);
}

async function stopJob(job) {
  const said = document.getElementById("stop-said");
  const button = document.getElementById("stop");
  button.disabled = true;
  try {
    const response = await fetch(`/ui/api/jobs/${encodeURIComponent(job.id)}/stop`, {
      method: "POST", credentials: "same-origin", headers: { "X-Bulkinfer-UI": "1" },
    });
    const body = await response.json();
    said.textContent = response.ok ? "Stop requested." : body.message;
  } catch (err) {
    said.textContent = "The stop could not be sent; try again.";
  } finally {
    button.disabled = false;
  }
}

function jobPage() {
  let job = pageData();
  chart(document.getElementById("chart"), job.series);
  document.getElementById("stop").addEventListener("click", () => stopJob(job));
  poll(async () => {
    job = await getJSON(`/ui/api/jobs/${encodeURIComponent(job.id)}`);
    showJob(job);
    return !job.ended_now; // an ended job changes no more: its outputs are not read again
  });
}

// models page

function modelsPage() {
  poll(async () => {
    const data = await getJSON("/ui/api/models");
    fillRows(document.getElementById("models"), data.models,
      ["name", "provider", "slots", "queue", "limits", "concurrency", "state"], "No models.");
  });
}

const pages = { jobs: jobsPage, job: jobPage, models: modelsPage };
(pages[document.body.dataset.page] || (() => {}))();
