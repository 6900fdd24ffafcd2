// Small helpers the dashboard's parts share: building elements (text always as text,
// never markup: everything shown comes from the API) and formatting numbers and times.

export const $ = (id) => document.getElementById(id);

/** An element with attributes (`class`, `for`, `aria-*`, ...) and children (text or nodes). */
export function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

/** Show a message in a status line (role="status" or "alert" in the page), or clear it. */
export function say(id, text, isError = false) {
  const box = $(id);
  box.textContent = text || "";
  box.hidden = !text;
  box.classList.toggle("error", Boolean(isError));
}

const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
// Axis ticks are steps of 1, 2, 2.5 or 5: two decimals keep 0.25 apart from 0.3.
const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 2 });

export const formatInt = (n) => (n === null || n === undefined ? "—" : integer.format(n));
export const formatDecimal = (n) => (n === null || n === undefined ? "—" : decimal.format(n));
export const formatCompact = (n) => compact.format(n);

/** USD with as many decimals as a small amount needs (a request costs fractions of a cent). */
export function formatUsd(n) {
  if (n === null || n === undefined) return "—";
  const digits = n === 0 || Math.abs(n) >= 1 ? 2 : Math.abs(n) >= 0.01 ? 3 : 5;
  return `$${n.toFixed(digits)}`;
}

/** Milliseconds as an axis shows them: 850 ms, 1.2 s. */
export function formatMs(n) {
  if (n === null || n === undefined) return "—";
  return n >= 1000 ? `${decimal.format(n / 1000)} s` : `${integer.format(n)} ms`;
}

const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
// Days are UTC days on the server: label them as such, or a day shows as the one before
// west of Greenwich.
const day = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", timeZone: "UTC" });
const moment = new Intl.DateTimeFormat(undefined, {
  month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
});

export const formatClock = (ms) => clock.format(ms);
export const formatDay = (ms) => day.format(ms);

/** An RFC 3339 time from the API as local time (the full value is the cell's title). */
export function formatMoment(text) {
  const ms = Date.parse(text);
  return Number.isNaN(ms) ? String(text ?? "—") : moment.format(ms);
}
