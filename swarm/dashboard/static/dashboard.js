// The swarm dashboard: polls /api/status and /api/history and redraws. Charts: charts.js.
"use strict";

const POLL_MS = 1500;
const HISTORY_LIMIT = 2000;
const CHANNEL_COLORS = {forward: "#2f7ed8", backward: "#d9822b", gradient: "#2e9d5b"};
const STATE_COLORS = {training: "#2e9d5b", standby: "#3a78c2", ready: "#1f9aa0", joining: "#9aa3ad",
  leaving: "#d98a1c"};

function $(id) { return document.getElementById(id); }
function setText(id, text) { $(id).textContent = text; }
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}
function fmt(value, digits) { return value === null || value === undefined ? "-" : Number(value).toFixed(digits); }
function tflops(value) { return value >= 10 ? value.toFixed(0) : value.toPrecision(3); }
// A peer's refused messages by reason ({malformed: n, nonfinite: n, ...}): the total, and the reasons seen.
function rejectedTotal(counts) { return Object.values(counts || {}).reduce((a, b) => a + b, 0); }
function rejectedWhy(counts) {
  return Object.entries(counts || {}).filter(([, n]) => n > 0).map(([why, n]) => `${why} ${n}`).join(", ");
}
function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 2 : 0)} ${units[i]}`;
}

async function fetchJson(url) {
  const reply = await fetch(url, {cache: "no-store"});
  if (!reply.ok) throw new Error(`${url}: HTTP ${reply.status}`);
  return reply.json();
}

async function refresh() {
  try {
    const [status, history] = await Promise.all([fetchJson("/api/status"),
      fetchJson(`/api/history?limit=${HISTORY_LIMIT}`)]);
    render(status, history);
    setText("updated", new Date().toLocaleTimeString());
  } catch (error) {
    setText("run-state", `coordinator unreachable (${error.message})`);
  } finally {
    setTimeout(refresh, POLL_MS);
  }
}

function render(status, history) {
  const plan = status.plan;
  setText("step", status.step);
  setText("total-steps", status.total_steps || history.total_steps || "-");
  setText("plan-version", status.plan_version ? `v${status.plan_version}` : "none yet");
  setText("loss", fmt(status.loss, 4));
  setText("tokens", Math.round(status.tokens_per_s).toLocaleString("en"));
  setText("run-state", status.done ? "finished" : plan ? `training ${history.model || ""}` : "waiting for peers");
  renderCapacity(status);
  renderGrid(status);
  renderCharts(history);
  renderChannels(history);
  renderPlans(history);
  renderPeers(status);
}

function members(plan) { return plan ? plan.grid.flat() : []; }

function renderCapacity(status) {
  const inGrid = new Set(members(status.plan));
  const peers = status.peers;
  const total = peers.reduce((sum, p) => sum + p.tflops, 0);
  const used = peers.filter((p) => inGrid.has(p.name)).reduce((sum, p) => sum + p.tflops, 0);
  const cards = [
    [tflops(total), "total TFLOPS (all live peers)"],
    [`${tflops(used)} (${total ? Math.round(100 * used / total) : 0}%)`, "used TFLOPS (grid members)"],
    [peers.filter((p) => inGrid.has(p.name) && p.state === "training").length, "peers training"],
    [status.plan ? status.plan.standby.length : 0, "standby"],
    [peers.length, "live peers"],
  ];
  $("capacity").replaceChildren(...cards.map(([value, label]) =>
    el("div", {class: "card"}, el("div", {class: "value"}, value), el("div", {class: "label"}, label))));
}

function linkBetween(byName, a, b) {
  const found = [byName[a] && byName[a].links[b], byName[b] && byName[b].links[a]].filter(Boolean);
  if (!found.length) return null;
  return found.reduce((x, y) => (x.bandwidth_gbps <= y.bandwidth_gbps ? x : y));
}

function renderGrid(status) {
  const box = $("grid");
  const plan = status.plan;
  if (!plan) { box.replaceChildren(el("p", {class: "muted"}, "no plan yet: the coordinator waits for peers")); return; }
  const byName = Object.fromEntries(status.peers.map((p) => [p.name, p]));
  const S = plan.grid.length, R = plan.grid[0].length;
  const CW = 210, CH = 74, GX = 90, GY = 56, LX = 96, TY = 26;
  const W = LX + R * CW + (R - 1) * GX + 10, H = TY + S * CH + (S - 1) * GY + 8;
  const svg = svgEl("svg", {id: "plan-grid", viewBox: `0 0 ${W} ${H}`, width: Math.min(W, 1100),
    "data-stages": S, "data-replicas": R});
  const cx = (r) => LX + r * (CW + GX), cy = (s) => TY + s * (CH + GY);
  const link = (a, b, x1, y1, x2, y2, kind) => {
    const measured = linkBetween(byName, a, b);
    const gbps = measured ? measured.bandwidth_gbps : null;
    svg.appendChild(svgEl("line", {x1, y1, x2, y2, stroke: bandwidthColor(gbps), "stroke-width": 5,
      "stroke-dasharray": measured ? "" : "5 4", class: `link ${kind}`, "data-link": `${a}-${b}`}));
    const label = measured ? `${gbps >= 10 ? gbps.toFixed(0) : gbps.toPrecision(2)} Gb/s` : "not measured";
    const mx = (x1 + x2) / 2, my = (y1 + y2) / 2;
    svg.appendChild(svgEl("text", {x: kind === "pipeline" ? mx + 8 : mx, y: kind === "pipeline" ? my + 4 : my - 8,
      "text-anchor": kind === "pipeline" ? "start" : "middle", "font-size": 11, fill: "#3d4650"}, label));
  };
  for (let r = 0; r < R; r++) {
    svg.appendChild(svgEl("text", {x: cx(r) + CW / 2, y: 14, "text-anchor": "middle", "font-size": 12,
      fill: "#6b7480"}, `replica ${r}`));
  }
  for (let s = 0; s < S; s++) {
    svg.appendChild(svgEl("text", {x: 4, y: cy(s) + CH / 2 - 4, "font-size": 12, fill: "#6b7480"}, `stage ${s}`));
    svg.appendChild(svgEl("text", {x: 4, y: cy(s) + CH / 2 + 12, "font-size": 11, fill: "#9aa3ad"},
      `${plan.layers[s]} layers`));
    for (let r = 0; r < R; r++) {
      if (s + 1 < S) link(plan.grid[s][r], plan.grid[s + 1][r], cx(r) + CW / 2, cy(s) + CH, cx(r) + CW / 2,
        cy(s + 1), "pipeline");
      if (r + 1 < R) link(plan.grid[s][r], plan.grid[s][r + 1], cx(r) + CW, cy(s) + CH / 2, cx(r + 1),
        cy(s) + CH / 2, "data-parallel");
    }
  }
  for (let s = 0; s < S; s++) {
    for (let r = 0; r < R; r++) {
      const name = plan.grid[s][r], peer = byName[name];
      const state = peer ? peer.state : "gone";
      const g = svgEl("g", {class: "cell", "data-peer": name, "data-state": state});
      g.appendChild(svgEl("rect", {x: cx(r), y: cy(s), width: CW, height: CH, rx: 6, fill: "#fff",
        stroke: peer && peer.error ? "#c8372d" : STATE_COLORS[state] || "#c8372d", "stroke-width": 2.5}));
      g.appendChild(svgEl("rect", {x: cx(r), y: cy(s), width: 8, height: CH, rx: 3,
        fill: STATE_COLORS[state] || "#c8372d"}));
      g.appendChild(svgEl("text", {x: cx(r) + 16, y: cy(s) + 21, "font-size": 14, "font-weight": 600,
        fill: "#1d232b"}, name));
      const speed = peer ? `${peer.device} · ${tflops(peer.tflops)} TFLOPS` : "no record (lost?)";
      g.appendChild(svgEl("text", {x: cx(r) + 16, y: cy(s) + 41, "font-size": 12, fill: "#3d4650"}, speed));
      const line3 = peer ? `${state} · step ${peer.step} · beat ${peer.heartbeat_age_s.toFixed(1)} s` : "gone";
      g.appendChild(svgEl("text", {x: cx(r) + 16, y: cy(s) + 60, "font-size": 12,
        fill: STATE_COLORS[state] || "#c8372d"}, line3));
      svg.appendChild(g);
    }
  }
  box.replaceChildren(svg);
  setText("plan-caption", `v${plan.version} from step ${plan.start_step}: ${S} stages x ${R} replicas`);
  const legend = [0.01, 0.1, 1, 10].map((g) => el("span", {},
    el("span", {class: "swatch", style: `background:${bandwidthColor(g)}`}), `${g} Gb/s`));
  legend.push(el("span", {}, el("span", {class: "swatch", style: `background:${bandwidthColor(null)}`}),
    "not measured"));
  $("link-legend").replaceChildren("links by measured bandwidth:", ...legend);
  const standby = plan.standby.map((name) => {
    const peer = byName[name];
    return el("span", {class: "tag joined", "data-peer": name},
      peer ? `${name} (${peer.device}, ${tflops(peer.tflops)} TFLOPS, ${peer.state})` : name);
  });
  $("standby").replaceChildren(...(standby.length ? ["standby: ", ...standby] : []));
}

function planMarks(plans, x) {
  return plans.slice(1).map((p) => ({x: x(p), label: `v${p.version} ${p.reason.change}`}));
}

function renderCharts(history) {
  const steps = history.steps, plans = history.plans;
  const byStep = (p) => p.start_step;
  lineChart($("chart-loss-box"), {id: "chart-loss", label: "loss per step", xLabel: "step", marks: planMarks(plans, byStep),
    series: [{name: "loss", color: "#c8372d", points: steps.filter((e) => e.loss !== null).map((e) => [e.step, e.loss])}]});
  lineChart($("chart-tokens-box"), {id: "chart-tokens", label: "tokens per second", xLabel: "step", zeroBased: true,
    marks: planMarks(plans, byStep), series: [{name: "tokens/s", color: "#2f7ed8",
      points: steps.map((e) => [e.step, e.tokens_per_s])}]});
  const t0 = steps.length ? steps[0].time : 0;  // the first commit: start-up time is not training time
  lineChart($("chart-step-box"), {id: "chart-step", label: "global step over time", xLabel: "seconds",
    zeroBased: true, marks: planMarks(plans, (p) => p.time - t0),
    series: [{name: "step", color: "#1d232b", points: steps.map((e) => [e.time - t0, e.step])}]});
  const channels = Object.keys(CHANNEL_COLORS);
  lineChart($("chart-bytes-box"), {id: "chart-bytes", label: "bytes per channel", xLabel: "step", zeroBased: true,
    marks: planMarks(plans, byStep), yFormat: (v) => bytes(v).replace(" ", ""),
    series: channels.map((ch) => ({name: ch, color: CHANNEL_COLORS[ch],
      points: steps.filter((e) => e.bytes && e.bytes[ch] !== undefined).map((e) => [e.step, e.bytes[ch]])}))});
}

function renderChannels(history) {
  const head = el("tr", {}, ...["channel", "codec", "bytes", "values", "bits / value", "vs fp32"].map((h, i) =>
    el("th", {class: i > 1 ? "num" : ""}, h)));
  const rows = Object.keys(CHANNEL_COLORS).map((ch) => {
    const c = history.channels[ch] || {bytes: 0, values: 0, bits_per_value: null, compression_ratio: null};
    const codec = history.codecs ? history.codecs[ch] + (ch === "forward" && history.codecs.forward_delta ? " (delta)" : "") : "-";
    return el("tr", {"data-channel": ch}, el("td", {}, el("span", {class: "swatch", style: `background:${CHANNEL_COLORS[ch]}`}), ch),
      el("td", {}, codec), el("td", {class: "num"}, bytes(c.bytes)), el("td", {class: "num"}, c.values.toLocaleString("en")),
      el("td", {class: "num"}, fmt(c.bits_per_value, 2)),
      el("td", {class: "num"}, c.compression_ratio ? `${c.compression_ratio.toFixed(1)}x smaller` : "-"));
  });
  $("channels").replaceChildren(head, ...rows);
}

function gridChanges(previous, plan) {
  if (!previous) return `${plan.grid.length} x ${plan.grid[0].length}`;
  const out = [];
  if (plan.grid[0].length !== previous.grid[0].length) out.push(`replicas ${previous.grid[0].length} → ${plan.grid[0].length}`);
  plan.grid.forEach((row, s) => row.forEach((name, r) => {
    const old = previous.grid[s] && previous.grid[s][r];
    if (old && old !== name) out.push(`s${s} r${r}: ${old} → ${name}`);
  }));
  return out.join("; ") || "grid unchanged";
}

function renderPlans(history) {
  const head = el("tr", {}, ...["version", "from step", "change", "why", "lost", "joined", "predicted s/step", "grid"]
    .map((h) => el("th", {}, h)));
  const plans = history.plans;
  const rows = plans.map((plan, i) => {
    const reason = plan.reason;
    const lost = Object.entries(reason.lost || {}).map(([name, why]) => `${name}: ${why}`).join(", ") || "-";
    return el("tr", {"data-version": plan.version}, el("td", {}, `v${plan.version}`), el("td", {}, plan.start_step),
      el("td", {}, el("span", {class: `tag ${reason.change}`}, reason.change)), el("td", {}, reason.text),
      el("td", {}, lost), el("td", {}, (reason.joined || []).join(", ") || "-"),
      el("td", {class: "num"}, reason.predicted_step_s === null ? "-" : reason.predicted_step_s.toPrecision(3)),
      el("td", {}, gridChanges(plans[i - 1], plan)));
  });
  $("plans").replaceChildren(head, ...rows.reverse());
}

function renderPeers(status) {
  const head = el("tr", {}, ...["peer", "state", "cell", "device", "TFLOPS", "heartbeat", "step", "rejected",
    "stale", "error"].map((h) => el("th", {}, h)));
  const rows = status.peers.map((p) => el("tr", {"data-peer": p.name}, el("td", {}, p.name), el("td", {}, p.state),
    el("td", {}, p.stage < 0 ? "-" : `s${p.stage} r${p.replica}`), el("td", {}, p.device),
    el("td", {class: "num"}, tflops(p.tflops)), el("td", {class: "num"}, `${p.heartbeat_age_s.toFixed(1)} s`),
    el("td", {class: "num"}, p.step),
    el("td", {class: "num", title: rejectedWhy(p.rejected)}, rejectedTotal(p.rejected)),
    el("td", {class: "num"}, p.dropped_stale),
    el("td", {}, p.error || "")));
  $("peers").replaceChildren(head, ...rows);
}

refresh();
