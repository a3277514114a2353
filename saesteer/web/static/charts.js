// saesteer charts: plotly.js (bundled, served locally) fed with numbers and fixed titles only:
// plotly interprets HTML-like markup in strings, so no string from the data ever reaches it.
"use strict";
window.saesteerCharts = (function () {
  const FONT = { family: 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif', size: 12, color: "#475063" };
  const CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d", "toggleSpikelines"] };
  function baseLayout(extra) {
    return Object.assign({
      font: FONT, margin: { l: 48, r: 12, t: 8, b: 40 }, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
      xaxis: { gridcolor: "#eef0f4", zerolinecolor: "#d3d8e1" }, yaxis: { gridcolor: "#eef0f4", zerolinecolor: "#d3d8e1" },
      bargap: 0.04, hoverlabel: { font: { family: FONT.family } },
    }, extra || {});
  }
  function num(v) { return typeof v === "number" && isFinite(v); }

  function histogram(el, spec) {
    const edges = (spec.edges || []).filter(num), counts = (spec.counts || []).filter(num);
    if (edges.length !== counts.length + 1 || !counts.length) return;
    const x = [], w = [];
    for (let i = 0; i < counts.length; i++) { x.push((edges[i] + edges[i + 1]) / 2); w.push(edges[i + 1] - edges[i]); }
    const trace = { type: "bar", x: x, y: counts, width: w, marker: { color: "#fb8d3d", line: { width: 0 } },
                    hovertemplate: "activation %{x:.3g}<br>count %{y}<extra></extra>" };
    const layout = baseLayout({ xaxis: { title: { text: "activation (where non-zero)" }, gridcolor: "#eef0f4" },
                                yaxis: { title: { text: "tokens" }, type: spec.log ? "log" : "linear", dtick: spec.log ? 1 : undefined, gridcolor: "#eef0f4" } });
    layout.margin.b = 46;
    return Plotly.newPlot(el, [trace], layout, CONFIG);
  }

  // spec: {x: [...], series: [{name, y: [...]}] (0..1 scores), y2: {name, y} (optional), mark: x (optional)}.
  // Names are fixed strings chosen by our own scripts, never data.
  const COLOURS = ["#e25609", "#2f5bd3", "#1f7a4d", "#7a4fd0"];
  function curve(el, spec) {
    const xs = (spec.x || []).map(Number);
    const traces = (spec.series || []).map(function (s, i) {
      return { type: "scatter", mode: "lines+markers", name: String(s.name), x: xs,
               y: (s.y || []).map((v) => (num(v) ? v : null)), line: { color: COLOURS[i % COLOURS.length], width: 2 },
               marker: { size: 7 }, hovertemplate: "%{y:.3f}<extra>" + String(s.name) + "</extra>" };
    });
    const layout = baseLayout({
      xaxis: { title: { text: "strength" }, gridcolor: "#eef0f4", zerolinecolor: "#d3d8e1" },
      yaxis: { title: { text: "score" }, range: [0, 1.05], gridcolor: "#eef0f4", zerolinecolor: "#d3d8e1" },
      legend: { orientation: "h", y: -0.28 }, showlegend: true,
    });
    if (spec.y2) {
      traces.push({ type: "scatter", mode: "lines+markers", name: String(spec.y2.name), x: xs, yaxis: "y2",
                    y: (spec.y2.y || []).map((v) => (num(v) ? v : null)), line: { color: "#6b7385", width: 1.5, dash: "dot" },
                    marker: { size: 5 }, hovertemplate: "%{y:.3g}<extra>" + String(spec.y2.name) + "</extra>" });
      layout.yaxis2 = { title: { text: String(spec.y2.name) }, overlaying: "y", side: "right", showgrid: false, rangemode: "tozero" };
      layout.margin.r = 52;
    }
    if (num(spec.mark)) {
      layout.shapes = [{ type: "line", x0: spec.mark, x1: spec.mark, yref: "paper", y0: 0, y1: 1,
                         line: { color: "#9aa3b5", width: 1.5, dash: "dash" } }];
    }
    layout.margin.b = 90;
    return Plotly.newPlot(el, traces, layout, CONFIG);
  }

  function drawAll() {
    if (!window.Plotly) return;
    document.querySelectorAll(".chart[data-chart]").forEach(function (el) {
      let spec;
      try { spec = JSON.parse(el.getAttribute("data-chart")); } catch (e) { return; }
      const p = spec.kind === "histogram" ? histogram(el, spec) : spec.kind === "curve" ? curve(el, spec) : null;
      if (p && p.then) p.then(function () { el.setAttribute("data-drawn", "1"); });
    });
  }
  document.addEventListener("DOMContentLoaded", drawAll);
  return { histogram: histogram, curve: curve, drawAll: drawAll };
})();
