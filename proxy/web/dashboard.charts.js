// The dashboard's charts: SVG drawn here, no library. Stacked bars for what adds up
// (requests, audio, cost) and lines for what does not (latency percentiles). Colours
// come from CSS classes (s0..s7, s-other), so the page needs no inline style and
// follows the light or dark scheme.

const SVG = "http://www.w3.org/2000/svg";
const HEIGHT = 190;
const MARGIN = { top: 10, right: 10, bottom: 24, left: 52 };

function node(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
  for (const child of children) element.append(child);
  return element;
}

function title(text) {
  // A tooltip for the mouse; textContent, never markup.
  const element = node("title");
  element.textContent = text;
  return element;
}

/** A round top for the y axis at or above `max`, and its ticks (0 and four steps). */
export function niceScale(max) {
  if (!(max > 0)) return { top: 1, ticks: [0, 0.25, 0.5, 0.75, 1] };
  const rough = max / 4;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= rough);
  return { top: step * 4, ticks: [0, 1, 2, 3, 4].map((i) => i * step) };
}

/**
 * Draw one chart into `container` (replacing what was there).
 *
 * spec: {
 *   kind: "bars" (stacked) or "lines",
 *   times: bucket starts (epoch ms), one per slot,
 *   series: [{group, cls, values: [number|null per slot], dashed?, name?}],
 *   overlay?: {name, cls, values} (a line over the bars: errors),
 *   format: (number) => axis text, timeText: (ms) => axis text,
 *   summary: the chart's text alternative (its aria-label),
 * }
 */
export function drawChart(container, spec) {
  const width = Math.max(280, Math.floor(container.clientWidth || 600));
  const plotW = width - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const slots = spec.times.length;
  const slot = plotW / Math.max(1, slots);
  const { top, ticks } = niceScale(highest(spec));
  const y = (value) => MARGIN.top + plotH - (value / top) * plotH;
  const x = (index) => MARGIN.left + slot * (index + 0.5); // a slot's middle

  const svg = node("svg", {
    width,
    height: HEIGHT,
    viewBox: `0 0 ${width} ${HEIGHT}`,
    role: "img",
    "aria-label": spec.summary,
  });
  svg.append(axes(spec, ticks, y, x, width, plotH, slots));
  if (spec.kind === "bars") svg.append(bars(spec, y, x, slot));
  else svg.append(lines(spec.series, y, x, spec));
  if (spec.overlay) svg.append(lines([spec.overlay], y, x, spec));
  container.replaceChildren(svg);
  return svg;
}

function highest(spec) {
  let max = 0;
  for (let i = 0; i < spec.times.length; i += 1) {
    if (spec.kind === "bars") {
      let sum = 0;
      for (const series of spec.series) sum += series.values[i] || 0;
      max = Math.max(max, sum);
    } else {
      for (const series of spec.series) max = Math.max(max, series.values[i] || 0);
    }
    if (spec.overlay) max = Math.max(max, spec.overlay.values[i] || 0);
  }
  return max;
}

function axes(spec, ticks, y, x, width, plotH, slots) {
  const group = node("g", { class: "axes", "aria-hidden": "true" });
  for (const tick of ticks) {
    const at = y(tick);
    group.append(node("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: at, y2: at, class: "grid" }));
    const label = node("text", { x: MARGIN.left - 6, y: at + 4, "text-anchor": "end" });
    label.textContent = spec.format(tick);
    group.append(label);
  }
  // As many time labels as fit the width (one per ~72 px, six at most), whatever the
  // number of slots.
  const fit = Math.max(2, Math.min(6, Math.floor((width - MARGIN.left - MARGIN.right) / 72)));
  const every = Math.max(1, Math.ceil(slots / fit));
  for (let i = 0; i < slots; i += every) {
    const label = node("text", { x: x(i), y: MARGIN.top + plotH + 17, "text-anchor": "middle" });
    label.textContent = spec.timeText(spec.times[i]);
    group.append(label);
  }
  return group;
}

function bars(spec, y, x, slot) {
  const group = node("g", { class: "bars" });
  const barW = Math.max(1, slot * 0.78);
  for (let i = 0; i < spec.times.length; i += 1) {
    let base = 0;
    for (const series of spec.series) {
      const value = series.values[i] || 0;
      if (value <= 0) continue;
      const top = y(base + value);
      const height = Math.max(0.5, y(base) - top);
      group.append(
        node(
          "rect",
          { x: x(i) - barW / 2, y: top, width: barW, height, class: series.cls, "data-group": series.group },
          title(`${series.group} · ${spec.timeText(spec.times[i])} · ${spec.format(value)}`),
        ),
      );
      base += value;
    }
  }
  return group;
}

function lines(seriesList, y, x, spec) {
  const group = node("g", { class: "lines" });
  for (const series of seriesList) {
    const d = pathOf(series.values, y, x);
    if (!d) continue;
    const path = node(
      "path",
      {
        d,
        class: `${series.cls}${series.dashed ? " dashed" : ""}`,
        "data-group": series.group,
      },
      title(series.name || series.group),
    );
    group.append(path);
  }
  return group;
}

/** A path through the slots that have a value: gaps where a slot has none, and a dot
 * (a zero-length segment with round caps) for a value with no neighbour. */
function pathOf(values, y, x) {
  const parts = [];
  let drawing = false;
  for (let i = 0; i < values.length; i += 1) {
    const value = values[i];
    if (value === null || value === undefined) {
      drawing = false;
      continue;
    }
    const point = `${x(i).toFixed(1)} ${y(value).toFixed(1)}`;
    const alone = !drawing && (values[i + 1] === null || values[i + 1] === undefined);
    parts.push(drawing ? `L${point}` : alone ? `M${point}h0.01` : `M${point}`);
    drawing = true;
  }
  return parts.join("");
}
