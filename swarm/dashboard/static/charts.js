// Hand-drawn SVG line charts for the swarm dashboard: no library, nothing fetched from elsewhere.
// lineChart(box, {id, series: [{name, color, points: [[x, y], ...]}], marks: [{x, label}],
//                 xLabel, xFormat, yFormat}) replaces box's content with one <svg id=id>.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceTicks(lo, hi, count) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / Math.max(1, count);
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

function compact(value) {
  const a = Math.abs(value);
  if (a >= 1e9) return (value / 1e9).toFixed(a >= 1e10 ? 0 : 1) + "G";
  if (a >= 1e6) return (value / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
  if (a >= 1e3) return (value / 1e3).toFixed(a >= 1e4 ? 0 : 1) + "k";
  if (a === 0 || a >= 10) return String(Math.round(value * 10) / 10);
  return String(Number(value.toPrecision(3)));
}

function lineChart(box, opts) {
  const W = 560, H = 230, L = 58, R = 14, T = 12, B = 34;
  const series = (opts.series || []).map((s) => ({...s, points: s.points.filter((p) => Number.isFinite(p[1]))}));
  const all = series.flatMap((s) => s.points);
  const svg = svgEl("svg", {id: opts.id, viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img",
    "data-points": series.length ? series[0].points.length : 0, "aria-label": opts.label || opts.id});
  box.replaceChildren(svg);
  if (!all.length) {
    svg.appendChild(svgEl("text", {x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#6b7480"}, "no data yet"));
    return svg;
  }
  let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
  let y0 = Math.min(...all.map((p) => p[1])), y1 = Math.max(...all.map((p) => p[1]));
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  const pad = (y1 - y0) * 0.08 || Math.abs(y1) * 0.1 || 1;
  y0 = opts.zeroBased ? Math.min(0, y0) : y0 - pad; y1 += pad;
  const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = (y) => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  const fx = opts.xFormat || compact, fy = opts.yFormat || compact;
  for (const t of niceTicks(y0, y1, 5)) {
    if (t < y0 || t > y1) continue;
    svg.appendChild(svgEl("line", {x1: L, x2: W - R, y1: sy(t), y2: sy(t), stroke: "#eceff2"}));
    svg.appendChild(svgEl("text", {x: L - 6, y: sy(t) + 4, "text-anchor": "end", "font-size": 11, fill: "#6b7480"},
      fy(t)));
  }
  for (const t of niceTicks(x0, x1, 6)) {
    if (t < x0 || t > x1) continue;
    svg.appendChild(svgEl("line", {x1: sx(t), x2: sx(t), y1: H - B, y2: H - B + 4, stroke: "#9aa3ad"}));
    svg.appendChild(svgEl("text", {x: sx(t), y: H - B + 16, "text-anchor": "middle", "font-size": 11,
      fill: "#6b7480"}, fx(t)));
  }
  svg.appendChild(svgEl("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#9aa3ad"}));
  svg.appendChild(svgEl("line", {x1: L, x2: L, y1: T, y2: H - B, stroke: "#9aa3ad"}));
  if (opts.xLabel) {
    svg.appendChild(svgEl("text", {x: W - R, y: H - 4, "text-anchor": "end", "font-size": 11, fill: "#6b7480"},
      opts.xLabel));
  }
  const labelled = [];  // x of the labels drawn so far: close ones go one line lower
  for (const mark of opts.marks || []) {  // plan changes
    if (mark.x < x0 || mark.x > x1) continue;
    const x = sx(mark.x), row = labelled.filter((lx) => Math.abs(lx - x) < 80).length;
    labelled.push(x);
    const g = svgEl("g", {class: "plan-mark"});
    g.appendChild(svgEl("line", {x1: x, x2: x, y1: T, y2: H - B, stroke: "#b06ab3", "stroke-dasharray": "4 3"}));
    g.appendChild(svgEl("text", {x: x + 3, y: T + 10 + 11 * row, "font-size": 10, fill: "#b06ab3"}, mark.label));
    svg.appendChild(g);
  }
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const path = s.points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    svg.appendChild(svgEl("polyline", {points: path, fill: "none", stroke: s.color, "stroke-width": 2,
      class: "series", "data-series": s.name}));
    if (s.points.length <= 120) {
      for (const p of s.points) svg.appendChild(svgEl("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 2.2, fill: s.color}));
    }
    if (series.length > 1) {
      svg.appendChild(svgEl("rect", {x: L + 8 + i * 110, y: T + 2, width: 14, height: 4, fill: s.color}));
      svg.appendChild(svgEl("text", {x: L + 26 + i * 110, y: T + 8, "font-size": 11, fill: "#1d232b"}, s.name));
    }
  });
  return svg;
}

// Measured link bandwidth (Gb/s) to a colour: red (<= 0.01) through amber to green (>= 10), log scale.
function bandwidthColor(gbps) {
  if (!(gbps > 0)) return "#b9c0c8";
  const t = Math.min(1, Math.max(0, (Math.log10(gbps) + 2) / 3));
  const hue = Math.round(t * 125);
  return `hsl(${hue}, 70%, 42%)`;
}
