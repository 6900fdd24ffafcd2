// The budgets (`GET /api/governance/budgets`): each one's limit, when it resets, and how
// much of it each key under it has spent. A proxy without the governance API (404) says
// so instead.
//
// Every key has its own allowance of its budget, counted in fixed windows of the budget's
// length from the Unix epoch (as the governor counts). The API lists budgets, not their
// counters, so the spend shown is the request log's for the window so far: one
// `/api/usage` query per window length, by key, in buckets. It leaves out what requests
// in flight have reserved.

import { api, listOf, query } from "./dashboard.api.js";
import { $, el, formatDecimal, formatUsd, say } from "./dashboard.dom.js";

// Bifrost's duration units, as the config file and the API write them.
const UNIT_S = { s: 1, m: 60, h: 3600, d: 86_400, w: 604_800, M: 2_592_000, Y: 31_536_000 };

const state = { ctx: null, generation: 0 };

export function initBudgets(ctx) {
  state.ctx = ctx;
}

/** A duration (`30s`, `1h`, `1M`, or seconds) in seconds; null when it does not parse. */
export function durationSeconds(text) {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([smhdwMY]?)\s*$/.exec(String(text ?? ""));
  if (!match) return null;
  const seconds = Number(match[1]) * (match[2] ? UNIT_S[match[2]] : 1);
  return seconds > 0 ? seconds : null;
}

/** List the budgets with what the keys of `keysLoading` (a promise of the keys section's
 * list, null when it failed) spent of them. */
export async function loadBudgets(keysLoading) {
  const generation = ++state.generation;
  say("budgets-status", "Loading…");
  try {
    const budgets = listOf(await api("/api/governance/budgets"), "budgets");
    const keys = (await keysLoading) || [];
    const spent = await spendByWindow(budgets, keys);
    if (generation !== state.generation) return;
    say("budgets-status", budgets.length ? "" : "No budgets are set.");
    $("budgets-table").tBodies[0].replaceChildren(...budgets.flatMap((budget) => rowsOf(budget, keys, spent)));
    $("budgets-table").hidden = !budgets.length;
    $("budgets-list").replaceChildren(...budgets.map((budget) => el("option", { value: budget.id })));
  } catch (error) {
    if (generation !== state.generation) return;
    $("budgets-table").tBodies[0].replaceChildren();
    $("budgets-table").hidden = true;
    if (error.status === 404) {
      say(
        "budgets-status",
        "Budgets are not available: this proxy has no governance API (GET /api/governance/budgets answered 404).",
      );
    } else {
      state.ctx.failed(error, "budgets-status");
    }
  }
}

/** The bucket width that divides a window of `seconds` (so its start is a bucket's). */
function intervalFor(seconds) {
  if (seconds % 86_400 === 0) return "1d";
  if (seconds % 3600 === 0) return "1h";
  return "1m";
}

/**
 * What each key spent in the current window of each budget length in use: a Map from
 * the window's length to {start, byKey: Map(key id -> {cost, audio_seconds})}.
 */
async function spendByWindow(budgets, keys) {
  const used = new Set(keys.map((key) => key.budget_id).filter(Boolean));
  const lengths = new Set(
    budgets
      .filter((budget) => used.has(budget.id))
      .map((budget) => durationSeconds(budget.reset_duration))
      .filter(Boolean),
  );
  const now = Date.now();
  const windows = new Map();
  await Promise.all(
    [...lengths].map(async (seconds) => {
      const start = Math.floor(now / (seconds * 1000)) * seconds * 1000;
      const params = {
        group_by: "virtual_key",
        interval: intervalFor(seconds),
        start_time: new Date(start).toISOString(),
      };
      const body = await api(`/api/usage${query(params)}`);
      const byKey = new Map();
      for (const group of listOf(body, "groups")) {
        const total = { cost: 0, audio_seconds: 0 };
        for (const bucket of group.buckets || []) {
          total.cost += bucket.cost || 0;
          total.audio_seconds += bucket.audio_seconds || 0;
        }
        byKey.set(group.group, total);
      }
      windows.set(seconds, { start, byKey });
    }),
  );
  return windows;
}

function amount(value, unit) {
  return unit === "audio_seconds" ? `${formatDecimal(value / 60)} audio min` : formatUsd(value);
}

/** A budget's rows: one per key under it (with what it spent), or one saying none is. */
function rowsOf(budget, keys, spent) {
  const unit = budget.unit || "usd";
  const limit = Number(budget.max_limit);
  const seconds = durationSeconds(budget.reset_duration);
  const window = spent.get(seconds);
  const resets = window ? new Date(window.start + seconds * 1000) : null;
  const under = keys.filter((key) => key.budget_id === budget.id);
  const head = (span) =>
    el(
      "th",
      { scope: "row", rowspan: span },
      String(budget.id),
      el("br"),
      el("small", {}, `${amount(limit, unit)} a key`),
    );
  const resetCell = (span) =>
    el(
      "td",
      { rowspan: span },
      `every ${budget.reset_duration ?? "—"}`,
      resets ? el("br") : null,
      resets ? el("small", {}, `next ${resets.toISOString().replace(".000Z", "Z")}`) : null,
    );
  if (!under.length) {
    const none = el("td", {}, "no key uses it");
    return [el("tr", { "data-id": budget.id }, head(1), el("td", {}, "—"), none, resetCell(1))];
  }
  return under.map((key, index) => {
    const total = window && window.byKey.get(key.id);
    const value = total ? (unit === "audio_seconds" ? total.audio_seconds : total.cost) : 0;
    const cells = [
      el("td", {}, String(key.id)),
      el("td", {}, spentCell(budget.id, key.id, value, limit, unit)),
    ];
    const row = el("tr", { "data-id": budget.id, "data-key": key.id });
    if (index === 0) row.append(head(under.length), ...cells, resetCell(under.length));
    else row.append(...cells);
    return row;
  });
}

function spentCell(budgetId, keyId, value, limit, unit) {
  const share = limit > 0 ? (value / limit) * 100 : 0;
  return el(
    "div",
    { class: "spent" },
    el("meter", {
      min: 0,
      max: limit > 0 ? limit : 1,
      low: limit * 0.75,
      high: limit * 0.9,
      optimum: 0,
      value: Math.min(value, limit),
      "aria-label": `Budget ${budgetId}, key ${keyId}: spent`,
    }),
    el("span", {}, `${amount(value, unit)} of ${amount(limit, unit)} (${formatDecimal(share)}%)`),
  );
}
