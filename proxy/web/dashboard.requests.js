// Recent requests: a page of `/api/logs` with its filters, sort and pagination; the live
// tail (`/api/logs/stream`) adding rows as they are written; one request's detail with
// its children (realtime turns, long-audio chunks) in a dialog.

import { api, query, tail } from "./dashboard.api.js";
import {
  $, el, formatDecimal, formatInt, formatMoment, formatMs, formatUsd, say,
} from "./dashboard.dom.js";
import { currentRange } from "./dashboard.usage.js";

const state = {
  ctx: null,
  sortBy: "timestamp",
  order: "desc",
  offset: 0,
  limit: 50,
  total: 0,
  generation: 0,
  tail: null, // the AbortController of the live tail, when it is on
  opener: null, // what had the focus when the detail opened
};

export function initRequests(ctx) {
  state.ctx = ctx;
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    filtersChanged();
  });
  // The form's own reset clears the fields; read them once it has.
  $("filters").addEventListener("reset", () => setTimeout(filtersChanged));
  for (const header of document.querySelectorAll("#logs-table th[data-sort]")) {
    header.querySelector("button").addEventListener("click", () => sortBy(header.dataset.sort));
  }
  $("prev").addEventListener("click", () => page(-1));
  $("next").addEventListener("click", () => page(1));
  $("tail").addEventListener("change", () => ($("tail").checked ? startTail() : stopTail()));
  $("detail-close").addEventListener("click", () => $("detail").close());
  $("detail").addEventListener("close", () => {
    if (state.opener && state.opener.isConnected) state.opener.focus();
  });
  showSort();
}

function filtersChanged() {
  state.offset = 0;
  loadLogs();
  if (state.tail) startTail(); // follow the new filters
}

function sortBy(column) {
  if (state.sortBy === column) state.order = state.order === "desc" ? "asc" : "desc";
  else [state.sortBy, state.order] = [column, "desc"];
  state.offset = 0;
  showSort();
  loadLogs();
}

function showSort() {
  for (const header of document.querySelectorAll("#logs-table th[data-sort]")) {
    if (header.dataset.sort === state.sortBy) {
      header.setAttribute("aria-sort", state.order === "desc" ? "descending" : "ascending");
    } else {
      header.removeAttribute("aria-sort");
    }
  }
}

function page(direction) {
  state.offset = Math.max(0, state.offset + direction * state.limit);
  loadLogs();
}

function localToIso(value) {
  // datetime-local has no zone: it is the browser's local time.
  if (!value) return "";
  const ms = new Date(value).getTime();
  return Number.isNaN(ms) ? "" : new Date(ms).toISOString();
}

/** The filters the form names, as the API's parameters (lists stay comma-separated). */
function filters() {
  const value = (id) => $(id).value.trim();
  return {
    providers: value("f-providers"),
    models: value("f-models"),
    virtual_key_ids: value("f-keys"),
    objects: value("f-objects"),
    status: value("f-status"),
    start_time: localToIso(value("f-start")),
    end_time: localToIso(value("f-end")),
    min_latency: value("f-min-latency"),
    max_latency: value("f-max-latency"),
    min_cost: value("f-min-cost"),
  };
}

export async function loadLogs() {
  const params = filters();
  // Without a start of its own, the table covers the charts' range (and so do its stats).
  const scoped = !params.start_time;
  if (scoped) params.start_time = new Date(currentRange().start).toISOString();
  state.limit = Number($("f-limit").value) || 50;
  const generation = ++state.generation;
  say("filters-error", "");
  say("requests-status", "Loading…");
  try {
    const paging = { limit: state.limit, offset: state.offset, sort_by: state.sortBy, order: state.order };
    const body = await api(`/api/logs${query({ ...params, ...paging })}`);
    if (generation !== state.generation) return;
    say("requests-status", "");
    showRows(body.logs || []);
    showStats(body.stats || {}, scoped);
    state.total = (body.pagination && body.pagination.total_count) || 0;
    showPager();
  } catch (error) {
    if (generation !== state.generation) return;
    if (error.param) {
      // A filter the API could not read: say which, next to the form.
      say("requests-status", "");
      say("filters-error", `${error.param}: ${error.message}`, true);
    } else {
      state.ctx.failed(error, "requests-status");
    }
  }
}

function showStats(stats, scoped) {
  const scope = scoped ? ` over ${currentRange().name}` : "";
  $("stats").textContent =
    `${formatInt(stats.total_requests || 0)} requests${scope}` +
    (stats.total_requests
      ? `: ${formatDecimal(stats.success_rate)}% succeeded; latency ${formatMs(stats.average_latency)} ` +
        `on average, p95 ${formatMs(stats.p95_latency)}; ` +
        `${formatDecimal((stats.total_audio_seconds || 0) / 60)} audio minutes; ${formatUsd(stats.total_cost || 0)}.`
      : ".");
}

function showPager() {
  const first = state.total ? state.offset + 1 : 0;
  const last = Math.min(state.offset + state.limit, state.total);
  $("page-text").textContent = `${formatInt(first)}–${formatInt(last)} of ${formatInt(state.total)}`;
  $("prev").disabled = state.offset === 0;
  $("next").disabled = state.offset + state.limit >= state.total;
}

function showRows(rows) {
  const body = $("logs-table").tBodies[0];
  body.replaceChildren(...rows.map((row) => rowOf(row)));
  if (!rows.length) {
    body.append(el("tr", {}, el("td", { colspan: 9, class: "empty" }, "No requests match.")));
  }
}

function statusText(row) {
  return [row.status, row.status_code, row.error_code].filter((part) => part !== null && part !== undefined).join(" ");
}

function model(row) {
  return row.model_deployment && row.model_deployment !== row.model_requested
    ? `${row.model_requested} → ${row.model_deployment}`
    : row.model_requested || row.model_deployment || "—";
}

/** One table row; the id is a button that opens the request's detail. */
function rowOf(row) {
  const open = el(
    "button",
    { type: "button", class: "link", "aria-label": `Details of request ${row.id}` },
    String(row.id),
  );
  open.addEventListener("click", () => openDetail(row.id, open));
  const tr = el(
    "tr",
    { "data-id": row.id },
    el(
      "td",
      { class: "when", title: row.timestamp },
      el("time", { datetime: row.timestamp }, formatMoment(row.timestamp)),
    ),
    el("td", { class: "id" }, open),
    el("td", {}, row.object || "—"),
    el("td", {}, row.virtual_key_id || "—"),
    el("td", {}, `${row.provider || "—"} / ${model(row)}`),
    el("td", {}, el("span", { class: `badge st-${row.status}` }, statusText(row))),
    el("td", { class: "num" }, formatInt(row.latency)),
    el("td", { class: "num" }, formatDecimal(row.audio_seconds)),
    el("td", { class: "num" }, formatUsd(row.cost)),
  );
  return tr;
}

// --- the live tail ------------------------------------------------------------------

function startTail() {
  stopTail(false);
  const controller = new AbortController();
  state.tail = controller;
  const params = filters();
  say("tail-status", "Following new requests…");
  let shown = 0;
  tail(params, (row) => {
    addLive(row);
    shown += 1;
    say("tail-status", `Following new requests: ${formatInt(shown)} so far.`);
  }, controller.signal)
    .then(() => {
      if (state.tail === controller) ended("The live tail ended (the proxy closed it).");
    })
    .catch((error) => {
      if (state.tail !== controller || error.name === "AbortError") return;
      ended("");
      state.ctx.failed(error, "tail-status");
    });
}

function ended(message) {
  state.tail = null;
  $("tail").checked = false;
  say("tail-status", message);
}

function stopTail(announce = true) {
  if (state.tail) state.tail.abort();
  state.tail = null;
  if (announce) say("tail-status", "");
}

export function restartTail() {
  if (state.tail) startTail();
}

export function stopLiveTail() {
  stopTail();
  $("tail").checked = false;
}

/** A row from the tail: it replaces the row with its id (a request is written when it
 * starts and again when it ends) or goes on top; the table keeps one page of rows. */
function addLive(row) {
  const body = $("logs-table").tBodies[0];
  const fresh = rowOf(row);
  fresh.classList.add("fresh");
  const existing = [...body.rows].find((tr) => tr.dataset.id === row.id);
  if (existing) {
    existing.replaceWith(fresh);
    return;
  }
  if (state.offset !== 0 || state.sortBy !== "timestamp" || state.order !== "desc") {
    return; // the page shown is not the newest rows: the count in the status says it
  }
  const empty = body.querySelector("td.empty");
  if (empty) empty.parentElement.remove();
  body.prepend(fresh);
  while (body.rows.length > state.limit) body.lastElementChild.remove();
}

// --- one request --------------------------------------------------------------------

const DETAIL_ORDER = [
  "id", "parent_request_id", "timestamp", "object", "status", "status_code", "error_code",
  "provider", "model_requested", "model_deployment", "virtual_key_id", "latency",
  "first_event_latency", "stream", "response_format", "bytes_in", "audio_seconds",
  "audio_seconds_source", "cost", "number_of_retries", "fallback_index", "cache_hit",
  "replica", "trace_id", "content",
];

export async function openDetail(id, opener) {
  const dialog = $("detail");
  state.opener = opener || document.activeElement;
  $("detail-title").textContent = `Request ${id}`;
  $("detail-fields").replaceChildren();
  $("detail-attempts").textContent = "";
  showChildren([]);
  say("detail-status", "Loading…");
  if (!dialog.open) dialog.showModal();
  try {
    const row = await api(`/api/logs/${encodeURIComponent(id)}`);
    say("detail-status", "");
    showDetail(row);
  } catch (error) {
    if (error.isAuth) dialog.close();
    state.ctx.failed(error, "detail-status");
  }
}

function showDetail(row) {
  const names = [...DETAIL_ORDER, ...Object.keys(row).filter((k) => !DETAIL_ORDER.includes(k) && k !== "children")];
  const items = [];
  for (const name of names) {
    if (!(name in row)) continue;
    const value = row[name];
    let shown;
    if (value === null || value === undefined) shown = "—";
    else if (typeof value === "boolean") shown = value ? "yes" : "no";
    else if (name === "timestamp") shown = `${value} (${formatMoment(value)})`;
    else if (name === "cost") shown = formatUsd(value);
    else if (typeof value === "object") shown = JSON.stringify(value);
    else shown = String(value);
    const dd = el("dd", { class: name === "content" ? "content" : null }, shown);
    if (name === "parent_request_id" && value) {
      const parent = el("button", { type: "button", class: "link" }, String(value));
      parent.addEventListener("click", () => openDetail(value, state.opener));
      dd.replaceChildren(parent);
    }
    items.push(el("dt", {}, name), dd);
  }
  $("detail-fields").replaceChildren(...items);
  $("detail-attempts").textContent = attemptsText(row);
  showChildren(Array.isArray(row.children) ? row.children : []);
}

/** What the row says of its upstream tries: how many, and which route answered. */
export function attemptsText(row) {
  if (row.cache_hit) return "Answered from the transcript cache: no upstream attempt.";
  const retries = Number(row.number_of_retries) || 0;
  const fallback = row.fallback_index;
  // Every route past the primary was reached after at least one failed try.
  const tries = retries + 1 + (Number(fallback) || 0);
  const counted =
    `${formatInt(tries)} ${tries === 1 ? "attempt" : "attempts"} ` +
    `(${formatInt(retries)} ${retries === 1 ? "retry" : "retries"})`;
  if (fallback === null || fallback === undefined) {
    return row.status === "processing" ? `${counted} so far.` : `${counted}; no route answered.`;
  }
  return `${counted}; answered by ${fallback === 0 ? "the primary route" : `fallback ${fallback}`}` +
    ` (${row.provider || "—"} / ${model(row)}).`;
}

function showChildren(children) {
  $("children-title").hidden = !children.length;
  $("children-table").hidden = !children.length;
  $("children-title").textContent = `Parts of this request (${children.length})`;
  $("children-table").tBodies[0].replaceChildren(
    ...children.map((child) => {
      const open = el(
        "button",
        { type: "button", class: "link", "aria-label": `Details of part ${child.id}` },
        String(child.id),
      );
      open.addEventListener("click", () => openDetail(child.id, state.opener));
      return el(
        "tr",
        { "data-id": child.id },
        el("td", { class: "id" }, open),
        el("td", {}, child.object || "—"),
        el("td", {}, el("span", { class: `badge st-${child.status}` }, statusText(child))),
        el("td", { class: "num" }, formatInt(child.latency)),
        el("td", { class: "num" }, formatDecimal(child.audio_seconds)),
        el("td", { class: "num" }, formatUsd(child.cost)),
      );
    }),
  );
}

/** The filter suggestions (`/api/logs/filterdata`): providers, models and keys seen. */
export async function loadFilterdata() {
  try {
    const data = await api("/api/logs/filterdata");
    for (const [list, values] of [
      ["providers-list", data.providers],
      ["models-list", data.models],
      ["keys-list", data.virtual_key_ids],
    ]) {
      $(list).replaceChildren(...(values || []).map((value) => el("option", { value })));
    }
  } catch (error) {
    // Suggestions only: the filters work without them. A refused key is said elsewhere.
    if (!error.isAuth) say("requests-status", `Filter suggestions unavailable: ${error.message}`, true);
  }
}
