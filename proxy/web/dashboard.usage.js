// The usage charts: one `/api/usage` query per view (buckets, never rows), drawn as SVG
// by group (key, model or provider), with a totals table as their text alternative.

import { api, query } from "./dashboard.api.js";
import { drawChart } from "./dashboard.charts.js";
import {
  $, el, formatClock, formatCompact, formatDay, formatDecimal, formatInt, formatMs, formatUsd, say,
} from "./dashboard.dom.js";

// Each range: the bucket width the API rolls up by, and how many buckets (the last one
// is the one in progress).
export const RANGES = {
  hour: { interval: "1m", step: 60_000, slots: 60, name: "the last hour", per: "minute" },
  day: { interval: "1h", step: 3_600_000, slots: 24, name: "the last day", per: "hour" },
  month: { interval: "1d", step: 86_400_000, slots: 30, name: "the last 30 days", per: "day" },
};
// Groups drawn in their own colour; the rest are added up as "other".
const SHOWN_GROUPS = 8;

const state = { ctx: null, data: null, draws: 0, width: 0, generation: 0 };

export function initUsage(ctx) {
  state.ctx = ctx;
  $("range").addEventListener("change", () => ctx.rangeChanged());
  $("group-by").addEventListener("change", () => loadUsage());
  $("refresh").addEventListener("click", () => ctx.refresh());
  // Charts are drawn at the width they have: again when it changes (a phone turned).
  new ResizeObserver(() => {
    const width = document.querySelector(".charts").clientWidth;
    if (state.data && width !== state.width) requestAnimationFrame(() => draw(state.data));
  }).observe(document.querySelector(".charts"));
}

/** The range chosen, with its first bucket's start (epoch ms, on the API's boundaries). */
export function currentRange() {
  const range = RANGES[$("range").value] || RANGES.day;
  const last = Math.floor(Date.now() / range.step) * range.step;
  return { ...range, start: last - (range.slots - 1) * range.step };
}

export async function loadUsage() {
  const range = currentRange();
  const groupBy = $("group-by").value;
  const generation = ++state.generation; // a slower, older answer must not overwrite a newer one
  say("usage-status", "Loading…");
  try {
    const params = { group_by: groupBy, interval: range.interval, start_time: new Date(range.start).toISOString() };
    const body = await api(`/api/usage${query(params)}`);
    if (generation !== state.generation) return;
    state.data = { range, groupBy, groups: Array.isArray(body.groups) ? body.groups : [] };
    say("usage-status", "");
    draw(state.data);
  } catch (error) {
    if (generation === state.generation) state.ctx.failed(error, "usage-status");
  }
}

/** Every group's values per slot, busiest first; past SHOWN_GROUPS, one "other". */
function seriesOf(data) {
  const { range } = data;
  const times = Array.from({ length: range.slots }, (_, i) => range.start + i * range.step);
  const all = data.groups.map((group) => {
    const slots = Array.from({ length: range.slots }, () => null);
    for (const bucket of group.buckets || []) {
      const index = Math.round((Date.parse(bucket.start) - range.start) / range.step);
      if (index >= 0 && index < range.slots) slots[index] = bucket;
    }
    const name = group.group === null || group.group === "" ? "(none)" : String(group.group);
    const sum = (field) => slots.reduce((total, b) => total + ((b && b[field]) || 0), 0);
    return {
      group: name,
      slots,
      requests: sum("requests"),
      errors: sum("errors"),
      audio: sum("audio_seconds"),
      cost: sum("cost"),
      worstP95: Math.max(0, ...slots.map((b) => (b && b.latency_p95) || 0)),
    };
  });
  all.sort((a, b) => b.requests - a.requests || a.group.localeCompare(b.group));
  all.forEach((series, i) => {
    series.cls = i < SHOWN_GROUPS ? `s${i}` : "s-other";
  });
  return { times, all, shown: all.slice(0, SHOWN_GROUPS), rest: all.slice(SHOWN_GROUPS) };
}

/** One bar series per shown group and one for the rest, of `field` (scaled). */
function barSeries(groups, field, scale = 1) {
  const { shown, rest } = groups;
  const values = (series) => series.slots.map((b) => (b ? (b[field] || 0) * scale : 0));
  const list = shown.map((series) => ({ group: series.group, cls: series.cls, values: values(series) }));
  if (rest.length) {
    const summed = rest.map(values).reduce((a, b) => a.map((v, i) => v + b[i]));
    list.push({ group: "other", cls: "s-other", values: summed });
  }
  return list;
}

function draw(data) {
  const groups = seriesOf(data);
  const { range } = data;
  const timeText = range.interval === "1d" ? formatDay : formatClock;
  const base = { times: groups.times, timeText };
  const totals = (field) => groups.all.reduce((total, series) => total + series[field], 0);
  const errors = groups.times.map((_, i) =>
    groups.all.reduce((total, series) => total + ((series.slots[i] && series.slots[i].errors) || 0), 0),
  );
  const busiest = peak(groups, "requests");

  chart("chart-requests", `Requests per ${range.per}, errors as the red line`, {
    ...base,
    kind: "bars",
    series: barSeries(groups, "requests"),
    overlay: { group: "errors", name: "errors", cls: "errors", values: errors },
    format: formatCompact,
    summary:
      `Requests per ${range.per} over ${range.name}: ${formatInt(totals("requests"))} in total, ` +
      `${formatInt(totals("errors"))} errors` +
      (busiest ? `; the busiest ${range.per} began ${timeText(busiest.time)} with ${formatInt(busiest.value)}.` : "."),
  });
  chart("chart-latency", "Latency: p95 solid, p50 dashed", {
    ...base,
    kind: "lines",
    series: groups.shown.flatMap((series) => {
      const of = (field) => series.slots.map((b) => (b ? b[field] : null));
      return [
        { group: series.group, name: `${series.group} p95`, cls: series.cls, values: of("latency_p95") },
        { group: series.group, name: `${series.group} p50`, cls: series.cls, dashed: true, values: of("latency_p50") },
      ];
    }),
    format: formatMs,
    summary: latencySummary(groups, range),
  });
  chart("chart-audio", `Audio minutes per ${range.per}`, {
    ...base,
    kind: "bars",
    series: barSeries(groups, "audio_seconds", 1 / 60),
    format: formatCompact,
    summary: `Audio minutes per ${range.per} over ${range.name}: ${formatDecimal(totals("audio") / 60)} in total.`,
  });
  chart("chart-cost", `Cost per ${range.per} (USD)`, {
    ...base,
    kind: "bars",
    series: barSeries(groups, "cost"),
    format: (v) => `$${formatCompact(v)}`,
    summary: `Cost per ${range.per} over ${range.name}: ${formatUsd(totals("cost"))} in total.`,
  });
  legend(groups);
  totalsTable(groups);
  state.width = document.querySelector(".charts").clientWidth;
  state.draws += 1;
  // For whoever measures the first paint (scripts/bench_dashboard.py) and for tests.
  if (state.draws === 1) performance.mark("dashboard:charts-drawn");
  $("usage").dataset.drawn = String(state.draws);
  $("usage").dataset.range = $("range").value;
}

function chart(id, caption, spec) {
  const figure = $(id);
  figure.querySelector("figcaption").textContent = caption;
  drawChart(figure.querySelector(".plot"), spec);
}

function peak(groups, field) {
  let best = null;
  groups.times.forEach((time, i) => {
    const value = groups.all.reduce((total, series) => total + ((series.slots[i] && series.slots[i][field]) || 0), 0);
    if (value > 0 && (!best || value > best.value)) best = { time, value };
  });
  return best;
}

function latencySummary(groups, range) {
  const parts = groups.shown
    .filter((series) => series.requests > 0)
    .map((series) => `${series.group} p95 up to ${formatMs(series.worstP95)}`);
  return `Latency per ${range.per} over ${range.name}` + (parts.length ? `: ${parts.join("; ")}.` : ": no requests.");
}

function legend(groups) {
  const items = groups.shown.map((series) =>
    el("li", {}, el("span", { class: `swatch ${series.cls}`, "aria-hidden": "true" }), series.group),
  );
  if (groups.rest.length) {
    const swatch = el("span", { class: "swatch s-other", "aria-hidden": "true" });
    items.push(el("li", {}, swatch, `other (${groups.rest.length})`));
  }
  if (groups.all.length) {
    items.push(el("li", {}, el("span", { class: "swatch errors", "aria-hidden": "true" }), "errors"));
  }
  $("legend").replaceChildren(...items);
  if (!groups.all.length) say("usage-status", "No requests in this range.");
}

function totalsTable(groups) {
  const rows = groups.all.map((series) =>
    el(
      "tr",
      {},
      el("th", { scope: "row" }, el("span", { class: `swatch ${series.cls}`, "aria-hidden": "true" }), series.group),
      el("td", { class: "num" }, formatInt(series.requests)),
      el("td", { class: "num" }, formatInt(series.errors)),
      el("td", { class: "num" }, formatDecimal(series.audio / 60)),
      el("td", { class: "num" }, formatUsd(series.cost)),
      el("td", { class: "num" }, formatInt(series.worstP95)),
    ),
  );
  $("usage-table").tBodies[0].replaceChildren(...rows);
}
