/* SPDX-License-Identifier: Apache-2.0 */
/* The console's pages: figures and uPlot charts drawn from the agent's JSON API.
   Every chart drawn is kept in window.predisCharts (by name), and body[data-ready] is set
   once the page is complete, so a browser test can read what was drawn. */
"use strict";

(function () {
  const WINDOW_SECONDS = 24 * 3600;
  const CHART_HEIGHT = 220;
  const NARROW_CHART_HEIGHT = 180;
  const NARROW_SCREEN = 820;
  const LOGIN_PATH = "/dashboard/login";
  const NO_DATA = "no data yet";
  const LONE_POINT_SPAN = 600;
  const DETAIL_CHARS = 200; // an event's summary in the models page's table
  const MIN_Y_AXIS = 56; // room for the date under the first time label
  const PALETTE = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
  const EVENT_COLOURS = { drift_detected: "#dc2626", rollout_decision: "#2563eb", model_promoted: "#16a34a" };
  const BREAKER_STATES = { 0: "closed", 1: "half-open", 2: "open" };

  const body = document.body;
  const page = body.dataset.page;
  const historyOn = body.dataset.history === "on";
  const since = Math.floor(Date.now() / 1000) - WINDOW_SECONDS;
  window.predisCharts = {};

  // -- the API ------------------------------------------------------------------------------
  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (response.status === 401) {
      window.location.assign(LOGIN_PATH);
      throw new Error("the session ended");
    }
    const body = await response.json();
    if (!response.ok) {
      throw new Error(body.error || `${url}: HTTP ${response.status}`);
    }
    return body;
  }

  function series(name) {
    return getJSON(`/api/v1/series?name=${encodeURIComponent(name)}&since=${since}`);
  }

  // -- numbers ------------------------------------------------------------------------------
  function compact(value) {
    const abs = Math.abs(value);
    if (abs >= 1e9) return (value / 1e9).toFixed(2) + "G";
    if (abs >= 1e6) return (value / 1e6).toFixed(2) + "M";
    if (abs >= 1e4) return (value / 1e3).toFixed(1) + "k";
    if (abs >= 100 || Number.isInteger(value)) return Math.round(value).toLocaleString("en");
    return value.toFixed(abs >= 10 ? 1 : 2);
  }

  function bytes(value) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let scaled = value;
    let i = 0;
    while (Math.abs(scaled) >= 1024 && i < units.length - 1) {
      scaled /= 1024;
      i += 1;
    }
    return [scaled.toFixed(i === 0 ? 0 : 1), units[i]];
  }

  function seconds(value) {
    const abs = Math.abs(value);
    if (abs === 0) return ["0", "s"];
    if (abs < 1e-6) return [(value * 1e9).toFixed(0), "ns"];
    if (abs < 1e-3) return [(value * 1e6).toFixed(1), "µs"];
    if (abs < 1) return [(value * 1e3).toFixed(1), "ms"];
    if (abs < 120) return [value.toFixed(1), "s"];
    if (abs < 7200) return [(value / 60).toFixed(1), "min"];
    return [(value / 3600).toFixed(1), "h"];
  }

  /* [number text, unit text] for a value, or null when there is no value. */
  function format(value, unit, currency) {
    if (value === null || value === undefined || typeof value !== "number" || !Number.isFinite(value)) return null;
    switch (unit) {
      case "ratio": return [(value * 100).toFixed(1), "%"];
      case "points": return [(value > 0 ? "+" : "") + (value * 100).toFixed(1), "points"];
      case "per_second": return [compact(value), "/s"];
      case "seconds": return seconds(value);
      case "seconds_per_second": {
        const [number, unit] = seconds(value);
        return [number, unit + "/s"];
      }
      case "bytes": return bytes(value);
      case "money": return [value.toFixed(2), currency ? currency + "/day" : "/day"];
      case "amount": return [value.toFixed(2), currency || ""];
      case "state": return [BREAKER_STATES[value] || String(value), ""];
      case "flag": return [value ? "yes" : "no", ""];
      case "version": return [value === 0 ? "fresh model" : "v" + Math.round(value), ""];
      default: return [compact(value), unit && unit !== "count" ? unit : ""];
    }
  }

  function axisValue(value, unit) {
    if (unit === "ratio") return (Math.round(value * 1000) / 10) + "%";
    const shown = format(value, unit);
    if (shown === null) return "";
    return shown[0] + (shown[1] && shown[1] !== "/s" ? " " + shown[1] : "");
  }

  /* The y axis as wide as its longest label (uPlot's fixed default cuts long ones). */
  function axisSize(u, values, axisIndex, cycle) {
    const axis = u.axes[axisIndex];
    if (cycle > 1) return axis._size;
    const longest = (values || []).reduce((a, v) => (String(v).length > a.length ? String(v) : a), "");
    u.ctx.font = axis.font[0];
    return Math.max(MIN_Y_AXIS, Math.ceil(axis.ticks.size + axis.gap + u.ctx.measureText(longest).width / devicePixelRatio) + 4);
  }

  // Tick steps of a bytes axis: 1, 2, 5, 10, ... times a power of 1024, so ticks fall on round KiB, MiB, GiB.
  const BYTE_STEPS = [0, 1, 2, 3, 4].flatMap((k) => [1, 2, 5, 10, 20, 50, 100, 200, 500].map((m) => m * 1024 ** k));

  const WHOLE_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];

  // Whole steps for the y axis of a discrete series (breaker states, flags).
  const DISCRETE_SPLITS = { state: [0, 1, 2], flag: [0, 1] };

  // -- DOM helpers --------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function notice(kind, title, text) {
    document.getElementById("notices").append(el("div", { class: "notice " + kind, role: "status" }, el("strong", {}, title), text));
  }

  /* A figure tile; `field` and the raw `value` are kept as data attributes for tests. */
  function tile(target, spec) {
    const shown = format(spec.value, spec.unit, spec.currency);
    const value = shown === null
      ? el("div", { class: "value empty" }, spec.empty || NO_DATA)
      : el("div", { class: "value" }, shown[0], shown[1] ? el("span", { class: "unit" }, shown[1]) : null);
    const node = el(
      "div",
      {
        class: "tile" + (spec.tone ? " " + spec.tone : ""),
        "data-field": spec.field || null,
        "data-value": spec.field ? JSON.stringify(spec.value === undefined ? null : spec.value) : null,
      },
      el("div", { class: "label" }, spec.label),
      value,
      spec.hint ? el("div", {
        class: "hint",
        "data-field": spec.hintField || null,
        "data-value": spec.hintField ? JSON.stringify(spec.hintValue === undefined ? null : spec.hintValue) : null,
      }, spec.hint) : null,
    );
    target.append(node);
    return node;
  }

  // -- charts -------------------------------------------------------------------------------
  function legendOf(source, labels) {
    if (source.split) {
      const key = labels[source.split];
      return (source.names && source.names[key]) || key || source.legend || source.series;
    }
    const parts = Object.values(labels || {});
    if (parts.length === 0) return source.legend || source.series;
    return source.legend ? `${source.legend} (${parts.join(" / ")})` : parts.join(" / ");
  }

  /* Aligned uPlot data from the points of one or more series: one line per label set. */
  function align(sources, responses) {
    const lines = new Map();
    sources.forEach((source, i) => {
      for (const point of responses[i].points) {
        if (source.split && source.only && !source.only.includes(point.labels[source.split])) continue;
        const name = legendOf(source, point.labels);
        if (!lines.has(name)) lines.set(name, new Map());
        const line = lines.get(name);
        // Several points of one line in one round (a line per detector over its features): the highest.
        line.set(point.ts, line.has(point.ts) && source.combine === "max" ? Math.max(line.get(point.ts), point.value) : point.value);
      }
    });
    const xs = Array.from(new Set(Array.from(lines.values()).flatMap((line) => Array.from(line.keys())))).sort((a, b) => a - b);
    const names = Array.from(lines.keys());
    const data = [xs, ...names.map((name) => xs.map((x) => (lines.get(name).has(x) ? lines.get(name).get(x) : null)))];
    return { names, data };
  }

  /* The time span to show: the points' own, widened around a lone point. */
  function xRange(times) {
    const lo = Math.min(...times);
    const hi = Math.max(...times);
    return hi > lo ? [lo, hi] : [lo - LONE_POINT_SPAN / 2, hi + LONE_POINT_SPAN / 2];
  }

  function chartWidth(box) {
    return Math.max(240, Math.floor(box.clientWidth));
  }

  function chartHeight() {
    return window.innerWidth <= NARROW_SCREEN ? NARROW_CHART_HEIGHT : CHART_HEIGHT;
  }

  function markers(events) {
    return {
      hooks: {
        draw: [
          (u) => {
            const ctx = u.ctx;
            ctx.save();
            ctx.lineWidth = 1.5 * devicePixelRatio;
            ctx.setLineDash([5 * devicePixelRatio, 4 * devicePixelRatio]);
            for (const event of events) {
              const x = Math.round(u.valToPos(event.ts, "x", true));
              if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
              ctx.strokeStyle = EVENT_COLOURS[event.kind] || "#6b7280";
              ctx.beginPath();
              ctx.moveTo(x, u.bbox.top);
              ctx.lineTo(x, u.bbox.top + u.bbox.height);
              ctx.stroke();
            }
            ctx.restore();
          },
        ],
      },
    };
  }

  function chartCard(target, spec) {
    const title = el("h3", {}, spec.title, spec.unitLabel ? el("span", { class: "unit" }, " · " + spec.unitLabel) : null);
    const box = el("div", { class: "plot" });
    const card = el("div", { class: "chart" + (spec.wide ? " wide" : ""), "data-chart": spec.key }, title, box);
    target.append(card);
    return { card, box };
  }

  async function chart(target, spec, events, fetched) {
    const { card, box } = chartCard(target, spec);
    let aligned;
    try {
      const responses = fetched || (await Promise.all(spec.sources.map((source) => series(source.series))));
      if (responses.some((r) => r.error)) throw new Error(responses.find((r) => r.error).error);
      aligned = align(spec.sources, responses);
    } catch (error) {
      box.append(el("div", { class: "empty" }, "unavailable: " + error.message));
      return null;
    }
    if (aligned.data[0].length === 0) {
      box.append(el("div", { class: "empty" }, NO_DATA));
      card.dataset.empty = "1";
      return null;
    }
    const unit = spec.unit;
    const options = {
      width: chartWidth(box),
      height: chartHeight(),
      scales: { x: { time: true, range: () => xRange(spec.xRange || aligned.data[0]) }, y: spec.yRange ? { range: spec.yRange } : {} },
      axes: [
        { stroke: "#5f6b7a", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e1e5ea" } },
        {
          stroke: "#5f6b7a", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e1e5ea" }, size: axisSize,
          splits: DISCRETE_SPLITS[unit] ? () => DISCRETE_SPLITS[unit] : undefined,
          incrs: unit === "bytes" ? BYTE_STEPS : unit === "version" ? WHOLE_STEPS : undefined,
          values: (u, splits) => splits.map((v) => axisValue(v, unit)),
        },
      ],
      series: [
        { label: "time" },
        ...aligned.names.map((name, i) => ({
          label: name,
          stroke: PALETTE[i % PALETTE.length],
          width: 2,
          spanGaps: true,
          paths: spec.stepped ? uPlot.paths.stepped({ align: 1 }) : undefined,
          value: (u, v) => (v === null ? "–" : axisValue(v, unit)),
        })),
      ],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      plugins: events && events.length ? [markers(events)] : [],
    };
    const plot = new uPlot(options, aligned.data, box);
    window.predisCharts[spec.key] = plot;
    return plot;
  }

  function resizeAll() {
    for (const plot of Object.values(window.predisCharts)) {
      const box = plot.root.parentElement;
      plot.setSize({ width: chartWidth(box), height: chartHeight() });
    }
  }

  function latest(response, filter) {
    const points = response.points.filter((p) => !filter || filter(p.labels));
    return points.length ? points[points.length - 1].value : null;
  }

  function latestBy(response, label) {
    const last = new Map();
    for (const point of response.points) last.set(point.labels[label] || "", point.value);
    return last;
  }

  async function optional(name) {
    try {
      return await series(name);
    } catch (error) {
      return { name, points: [], error: error.message };
    }
  }

  function historyOff() {
    notice("info", "No history", "History is off: set console.history_path in the agent's config to keep the measurements these charts draw from.");
  }

  // -- the pages ----------------------------------------------------------------------------
  const tiles = document.getElementById("tiles");
  const charts = document.getElementById("charts");
  const extra = document.getElementById("extra");

  async function overview() {
    if (!historyOn) return historyOff();
    const [hits, ops, latency, memory] = await Promise.all(["hit_ratio", "ops_per_second", "latency_seconds", "memory_bytes"].map(optional));
    tile(tiles, { label: "Hit ratio, all reads", unit: "ratio", value: latest(hits, (l) => l.of === "all"), hint: "the latest round; the ROI page has the window's" });
    tile(tiles, { label: "Hit ratio without prefetching", unit: "ratio", value: latest(hits, (l) => l.of === "control"), hint: "the latest round of the control share, never prefetched" });
    tile(tiles, { label: "Operations", unit: "per_second", value: latest(ops) });
    tile(tiles, { label: "Latency p99", unit: "seconds", value: latest(latency, (l) => l.quantile === "0.99") });
    tile(tiles, { label: "Cache memory", unit: "bytes", value: latest(memory, (l) => l.of === "cache") });
    await Promise.all([
      chart(charts, {
        key: "hit_ratio", title: "Hit ratio with and without prefetching", unit: "ratio", unitLabel: "%", wide: true, yRange: [0, 1],
        sources: [{ series: "hit_ratio", split: "of", names: { all: "all reads", treated: "with prefetching", control: "without prefetching" } }],
      }, null, [hits]),
      chart(charts, { key: "ops_per_second", title: "Operations", unit: "per_second", unitLabel: "per second", sources: [{ series: "ops_per_second", legend: "ops/s" }] }, null, [ops]),
      chart(charts, {
        key: "latency_seconds", title: "Latency", unit: "seconds", unitLabel: "seconds",
        sources: [{ series: "latency_seconds", split: "quantile", names: { "0.5": "p50", "0.99": "p99" } }],
      }, null, [latency]),
      chart(charts, {
        key: "memory_bytes", title: "Memory", unit: "bytes", unitLabel: "bytes", wide: true,
        sources: [{ series: "memory_bytes", split: "of", names: { cache: "cache", process: "process (RSS)" } }],
      }, null, [memory]),
    ]);
  }

  const ROI_FIGURES = [
    ["Reads", [
      ["requests", "Reads", "count"], ["hits", "Hits", "count"], ["misses", "Misses", "count"],
      ["prefetch_hits", "Hits on prefetched keys", "count"], ["hit_ratio", "Hit ratio", "ratio"],
      ["hit_ratio_without_prefetch", "Hit ratio without prefetching", "ratio"],
    ]],
    ["What prefetching added", [
      ["prefetch_uplift", "Hit ratio added", "points"], ["prefetch_extra_hits", "Extra hits", "count"],
      ["prefetch_origin_reads", "Origin reads by the prefetcher", "count"],
      ["origin_reads_avoided_by_prefetch", "Origin reads avoided by prefetching", "count"],
      ["origin_latency_avoided_by_prefetch_seconds", "Origin latency avoided by prefetching", "seconds"],
    ]],
    ["Control traffic (never prefetched)", [
      ["control.share", "Control share", "ratio"], ["control.reads", "Control reads", "count"],
      ["control.hits", "Control hits", "count"], ["control.needed", "Control reads still needed", "count"],
      ["confidence_level", "Confidence level of the intervals", "ratio"],
    ]],
    ["Origin", [
      ["origin_reads", "Origin reads", "count"], ["origin_reads_avoided", "Origin reads avoided", "count"],
      ["origin_reads_avoided_vs_baseline", "Avoided against the baseline", "count"], ["origin_bytes_avoided", "Origin bytes avoided", "bytes"],
      ["origin_latency_seconds_mean", "Origin latency, mean", "seconds"], ["origin_latency_avoided_seconds", "Origin latency avoided", "seconds"],
    ]],
    ["Costs", [
      ["costs.origin_read_cost_avoided", "Origin read cost avoided", "amount"], ["costs.origin_bytes_cost_avoided", "Origin transfer cost avoided", "amount"],
      ["costs.avoided_per_day", "Avoided per day", "money"], ["costs.gpu_cost_per_day", "GPU cost per day", "money"],
      ["costs.net_per_day", "Net per day", "money"],
    ]],
  ];
  // Intervals, shown under the figure they belong to.
  const ROI_INTERVALS = { hit_ratio_without_prefetch: "hit_ratio_without_prefetch_ci", prefetch_uplift: "prefetch_uplift_ci" };

  function field(report, path) {
    return path.split(".").reduce((node, key) => (node === null || node === undefined ? null : node[key]), report);
  }

  async function roi() {
    if (!historyOn) historyOff();
    const report = await getJSON(`/api/v1/roi?since=${since}`);
    const exports = el("div", { class: "exports" },
      el("a", { class: "button", href: `/api/v1/roi?since=${since}&format=csv`, download: "predis-roi.csv" }, "Export CSV"),
      el("a", { class: "button", href: `/api/v1/roi?since=${since}&format=json`, download: "predis-roi.json" }, "Export JSON"));
    tiles.before(exports);
    const until = report.until === undefined || report.until === null ? "now" : new Date(report.until * 1000).toLocaleString();
    const window_ = el("p", { class: "lede" },
      el("span", { "data-field": "window_seconds", "data-value": JSON.stringify(report.window_seconds === undefined ? null : report.window_seconds) },
        `Window: ${new Date(report.since * 1000).toLocaleString()} – ${until}`),
      el("span", { "data-field": "rounds", "data-value": JSON.stringify(report.rounds === undefined ? null : report.rounds) },
        typeof report.rounds === "number" ? ` · ${compact(report.rounds)} collection rounds` : ""),
      report.prefetch ? ` · prefetching ${report.prefetch}` : "");
    tiles.before(window_);
    if (report.status === "no_data") {
      notice("info", "No data yet", "The report needs reads measured in this window; it fills in as the cache serves reads.");
    }
    const control = report.control || {};
    if (report.status !== "no_data" && control.enough === false) {
      notice("", "Not enough control traffic yet",
        `${compact(control.reads || 0)} ${control.reads === 1 ? "read" : "reads"} of the never-prefetched control share measured, ${compact(control.needed)} more needed before the hit ratio without prefetching and what prefetching added are shown.`);
    }
    const currency = report.costs ? report.costs.currency : null;
    for (const [heading, figures] of ROI_FIGURES) {
      const group = el("div", { class: "tiles" });
      for (const [path, label, unit] of figures) {
        const value = field(report, path);
        const spec = { field: path, label, unit, value, currency };
        if (ROI_INTERVALS[path]) {
          const ci = field(report, ROI_INTERVALS[path]);
          const level = typeof report.confidence_level === "number" ? `${Math.round(report.confidence_level * 100)}% interval` : "interval";
          const ends = ci ? ci.map((end) => format(end, unit)) : null;
          spec.hint = ends ? `${level} ${ends[0][0]} to ${ends[1][0]} ${ends[0][1]}` : `${level}: ${NO_DATA}`;
          spec.hintField = ROI_INTERVALS[path];
          spec.hintValue = ci;
        }
        if (path === "costs.net_per_day" && typeof value === "number") spec.tone = value >= 0 ? "good" : "bad";
        const missing = report.missing || [];
        if (path.startsWith("costs.") && value === null && missing.length) spec.empty = "cost not configured";
        if (path === "origin_reads_avoided_vs_baseline" && value === null && missing.includes("console.costs.baseline_hit_ratio")) spec.empty = "baseline not configured";
        tile(group, spec);
      }
      extra.append(el("h2", {}, heading), group);
    }
    if (report.missing && report.missing.length) {
      const list = el("ul", { class: "missing" }, ...report.missing.map((key) => el("li", { "data-missing": key }, el("code", {}, key))));
      const box = el("div", { class: "notice", id: "missing-costs" }, el("strong", {}, "Missing costs"),
        "These costs are not configured, so the figures that need them are not computed:", list);
      extra.append(box);
    }
    if (report.notes && report.notes.length) {
      extra.append(el("h2", {}, "Notes"), el("ul", { class: "notes" }, ...report.notes.map((note) => el("li", {}, note))));
    }
    tiles.remove();
  }

  async function prefetching() {
    if (!historyOn) return historyOff();
    const [precision, rates, backedOff, threshold, cost] = await Promise.all(
      ["prefetch_precision", "prefetch_per_second", "predis_cache_prefetch_backed_off", "predis_cache_prefetch_threshold", "prefetch_model_seconds_per_second"].map(optional));
    tile(tiles, { label: "Precision", unit: "ratio", value: latest(precision), hint: "prefetched keys read before eviction" });
    tile(tiles, { label: "Used", unit: "per_second", value: latest(rates, (l) => l.of === "used") });
    tile(tiles, { label: "Wasted", unit: "per_second", value: latest(rates, (l) => l.of === "wasted") });
    const off = latest(backedOff);
    tile(tiles, { label: "Backed off", unit: "flag", value: off, tone: off ? "bad" : null });
    tile(tiles, { label: "Threshold", unit: "count", value: latest(threshold) });
    tile(tiles, { label: "Model cost", unit: "seconds_per_second", value: latest(cost), hint: "inference time per second of wall time" });
    await Promise.all([
      chart(charts, { key: "prefetch_precision", title: "Precision", unit: "ratio", unitLabel: "%", yRange: [0, 1], sources: [{ series: "prefetch_precision", legend: "precision" }] }, null, [precision]),
      chart(charts, {
        key: "prefetch_per_second", title: "Prefetches", unit: "per_second", unitLabel: "per second",
        sources: [{ series: "prefetch_per_second", split: "of", names: { inserted: "inserted", used: "used", wasted: "wasted" } }],
      }, null, [rates]),
      chart(charts, { key: "predis_cache_prefetch_threshold", title: "Threshold", unit: "count", sources: [{ series: "predis_cache_prefetch_threshold", legend: "threshold" }] }, null, [threshold]),
      chart(charts, {
        key: "predis_cache_prefetch_backed_off", title: "Back-off", unit: "flag", unitLabel: "1: backed off", stepped: true, yRange: [0, 1],
        sources: [{ series: "predis_cache_prefetch_backed_off", legend: "backed off" }],
      }, null, [backedOff]),
      chart(charts, {
        key: "prefetch_model_seconds_per_second", title: "Model cost", unit: "seconds_per_second", unitLabel: "inference per second", wide: true,
        sources: [{ series: "prefetch_model_seconds_per_second", legend: "model" }],
      }, null, [cost]),
    ]);
  }

  /* An event's detail in a line: its plain fields (text, numbers, lists of them), not its nested records. */
  function summary(detail) {
    const parts = [];
    for (const [key, value] of Object.entries(detail || {})) {
      const plain = (v) => v === null || ["string", "number", "boolean"].includes(typeof v);
      if (plain(value)) parts.push(`${key}: ${value}`);
      else if (Array.isArray(value) && value.every(plain)) parts.push(`${key}: ${value.join(", ")}`);
    }
    const text = parts.join(" · ");
    return text.length > DETAIL_CHARS ? text.slice(0, DETAIL_CHARS - 1) + "…" : text;
  }

  function eventRows(events, empty = "No drift events or rollout decisions in this window.") {
    if (!events.length) return el("p", { class: "lede" }, empty);
    const rows = events.slice().reverse().map((event) => el("tr", { "data-kind": event.kind },
      el("td", {}, new Date(event.ts * 1000).toLocaleString()),
      el("td", {}, el("span", { style: `color:${EVENT_COLOURS[event.kind] || "#6b7280"}` }, "● "), event.kind.replaceAll("_", " ")),
      el("td", { class: "detail" }, summary(event.detail))));
    return el("table", { class: "events" }, el("thead", {}, el("tr", {}, el("th", {}, "time"), el("th", {}, "event"), el("th", {}, "detail"))), el("tbody", {}, ...rows));
  }

  async function models() {
    if (!historyOn) return historyOff();
    const [version, share, champion, challenger, drift, events] = await Promise.all([
      optional("predis_mlops_serving_version"), optional("predis_mlops_rollout_share_ratio"), optional("predis_mlops_champion_hit_ratio"),
      optional("predis_mlops_candidate_hit_ratio"), optional("predis_drift_score"),
      getJSON(`/api/v1/events?since=${since}`).then((body) => body.events).catch(() => []),
    ]);
    const versions = latestBy(version, "tenant");
    if (versions.size <= 1) tile(tiles, { label: "Serving version", unit: "version", value: versions.size ? versions.values().next().value : null });
    for (const [tenant, value] of versions.size > 1 ? versions : []) tile(tiles, { label: `Serving version (${tenant})`, unit: "version", value });
    tile(tiles, { label: "Rollout share", unit: "ratio", value: latest(share), hint: "decisions the challenger makes" });
    tile(tiles, { label: "Champion hit ratio", unit: "ratio", value: latest(champion) });
    tile(tiles, { label: "Challenger hit ratio", unit: "ratio", value: latest(challenger) });
    const lastRound = drift.points.length ? drift.points[drift.points.length - 1].ts : null;
    const scores = drift.points.filter((p) => p.ts === lastRound).map((p) => p.value);
    tile(tiles, { label: "Drift score (highest)", unit: "count", value: scores.length ? Math.max(...scores) : null, hint: "the latest check, over every detector and feature" });
    const timeline = events.filter((e) => e.kind === "drift_detected" || e.kind.startsWith("rollout") || e.kind.startsWith("model_"));
    // One time axis for every chart of the page and the events, so they line up.
    const times = [version, share, champion, challenger, drift].flatMap((r) => r.points.map((p) => p.ts)).concat(timeline.map((e) => e.ts));
    const xRange = times.length ? [Math.min(...times), Math.max(...times)] : null;
    await Promise.all([
      chart(charts, {
        key: "model_hit_ratio", title: "Champion and challenger", unit: "ratio", unitLabel: "hit ratio on held-out reads", xRange,
        sources: [{ series: "predis_mlops_champion_hit_ratio", legend: "champion" }, { series: "predis_mlops_candidate_hit_ratio", legend: "challenger" }],
      }, timeline, [champion, challenger]),
      chart(charts, {
        key: "predis_mlops_rollout_share_ratio", title: "Rollout share", unit: "ratio", unitLabel: "%", xRange, stepped: true, yRange: [0, 1],
        sources: [{ series: "predis_mlops_rollout_share_ratio", legend: "challenger share" }],
      }, timeline, [share]),
      chart(charts, {
        key: "predis_drift_score", title: "Drift score", unit: "count", wide: true, xRange,
        unitLabel: "highest over the features, per detector",
        sources: [{ series: "predis_drift_score", split: "detector", combine: "max" }],
      }, timeline, [drift]),
      chart(charts, {
        key: "predis_mlops_serving_version", title: "Serving version", unit: "version", unitLabel: "registry version (0: a fresh model)", xRange, stepped: true, wide: true,
        yRange: (u, min, max) => [0, Math.max(1, max + 1)],
        sources: [{ series: "predis_mlops_serving_version", legend: "version" }],
      }, timeline, [version]),
    ]);
    extra.append(el("h2", {}, "Drift events and rollout decisions"), el("p", { class: "lede" }, "Dashed lines on the charts mark them on the same time axis."), eventRows(timeline));
  }

  async function exporters() {
    if (!historyOn) return historyOff();
    const [breakers, queues, budgets, events] = await Promise.all([
      ...["sink_breaker_state", "predis_agent_sink_queue_points", "predis_agent_sink_outage_budget_seconds"].map(optional),
      getJSON(`/api/v1/events?since=${since}`).then((body) => body.events).catch(() => []),
    ]);
    const states = latestBy(breakers, "sink");
    const queued = latestBy(queues, "sink");
    const budget = latestBy(budgets, "sink");
    if (states.size === 0) tile(tiles, { label: "Sinks", unit: "count", value: null, empty: "no push exporter measured yet" });
    for (const [sink, state] of states) {
      tile(tiles, { label: `${sink}: breaker`, unit: "state", value: state, tone: state === 0 ? "good" : "bad",
        hint: `queue ${queued.has(sink) ? compact(queued.get(sink)) : NO_DATA} points · outage budget ${budget.has(sink) ? seconds(budget.get(sink)).join(" ") : NO_DATA}` });
    }
    await Promise.all([
      chart(charts, {
        key: "sink_breaker_state", title: "Circuit breakers", unit: "state", unitLabel: "0 closed · 1 half-open · 2 open", stepped: true, wide: true, yRange: [0, 2],
        sources: [{ series: "sink_breaker_state", split: "sink" }],
      }, null, [breakers]),
      chart(charts, { key: "predis_agent_sink_queue_points", title: "Queued points", unit: "count", sources: [{ series: "predis_agent_sink_queue_points", split: "sink" }] }, null, [queues]),
      chart(charts, {
        key: "predis_agent_sink_outage_budget_seconds", title: "Outage budget left", unit: "seconds", unitLabel: "seconds",
        sources: [{ series: "predis_agent_sink_outage_budget_seconds", split: "sink" }],
      }, null, [budgets]),
    ]);
    // What the AIOps step forecast, detected and did (docs/aiops.md), as the agent's events.
    const aiops = events.filter((e) => e.kind.startsWith("aiops_"));
    extra.append(el("h2", {}, "AIOps: forecasts, anomalies and actions"),
      el("p", { class: "lede" }, "ETAs below their horizon, anomalies and remediation actions (dry runs included), newest first; /status components.aiops has their state."),
      eventRows(aiops, "No AIOps forecast, anomaly or action in this window."));
  }

  const PAGES = { overview, roi, prefetching, models, exporters };

  async function main() {
    try {
      await PAGES[page]();
    } catch (error) {
      notice("error", "This page could not be loaded", error.message);
    }
    window.addEventListener("resize", resizeAll);
    body.dataset.ready = "1";
  }

  main();
})();
