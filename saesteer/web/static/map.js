// saesteer feature map: the stored 2-d layout of the latents, drawn with plotly (served locally).
// Only numbers and our own fixed names reach plotly (it interprets HTML-like markup in strings);
// a point's label is shown beside the chart through textContent.
"use strict";
(function () {
  const HEALTH = ["ok", "dead", "dense", "bos_only", "single_position"];
  const HEALTH_COLOUR = { ok: "#2f5bd3", dead: "#9aa3b5", dense: "#e25609", bos_only: "#7a4fd0", single_position: "#1f7a4d" };
  const LEVEL_COLOURS = ["#e25609", "#2f5bd3", "#1f7a4d", "#7a4fd0", "#c2185b", "#00838f", "#8d6e63", "#5f6b7a"];
  const FONT = { family: 'system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif', size: 12, color: "#475063" };
  const CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d", "toggleSpikelines"] };
  // the colouring the page marks pressed: Matryoshka levels where the store has them, else health
  const pressed = document.querySelector('[data-colour][aria-pressed="true"]');
  let data = null, colourBy = pressed ? pressed.getAttribute("data-colour") : "health";
  // WebGL for big maps where the browser has it; SVG otherwise (and for small maps: crisper)
  const WEBGL = (function () {
    try { return !!document.createElement("canvas").getContext("webgl"); } catch (e) { return false; }
  })();
  function kind() { return WEBGL && data && data.points.length > 4000 ? "scattergl" : "scatter"; }

  function num(v) { return typeof v === "number" && isFinite(v); }

  function group(points, keyOf, nameOf, colourOf) {
    const groups = new Map();
    points.forEach(function (p) {
      const k = keyOf(p);
      if (!groups.has(k)) groups.set(k, []);
      groups.get(k).push(p);
    });
    return Array.from(groups.keys()).sort().map(function (k) {
      const ps = groups.get(k);
      return trace(ps, nameOf(k), { color: colourOf(k), size: 6, opacity: 0.85 });
    });
  }

  function trace(ps, name, marker) {
    return { type: kind(), mode: "markers", name: name, x: ps.map((p) => p.x), y: ps.map((p) => p.y),
             customdata: ps.map((p) => p.latent), marker: marker, hovertemplate: "#%{customdata}<extra></extra>" };
  }

  function traces() {
    const pts = data.points;
    if (colourBy === "level") {
      return group(pts, (p) => (num(p.level) ? p.level : -1), (k) => (k < 0 ? "no level" : "level " + k),
                   (k) => (k < 0 ? "#9aa3b5" : LEVEL_COLOURS[k % LEVEL_COLOURS.length]));
    }
    if (colourBy === "health") {
      return group(pts, (p) => (HEALTH.indexOf(p.health) >= 0 ? p.health : "ok"), (k) => k, (k) => HEALTH_COLOUR[k]);
    }
    const field = colourBy === "output" ? "output_score" : "score";
    const have = pts.filter((p) => num(p[field])), none = pts.filter((p) => !num(p[field]));
    const out = [];
    if (none.length) out.push(trace(none, "unscored", { color: "#c9ced8", size: 5, opacity: 0.6 }));
    if (have.length) {
      out.push(trace(have, colourBy === "output" ? "output score" : "score", {
        color: have.map((p) => p[field]), colorscale: "Viridis", cmin: colourBy === "output" ? 0 : 0.5, cmax: 1,
        size: 7, showscale: true, colorbar: { thickness: 12, len: 0.8 } }));
    }
    return out;
  }

  function draw(el) {
    const layout = { font: FONT, margin: { l: 20, r: 20, t: 10, b: 20 }, paper_bgcolor: "rgba(0,0,0,0)",
                     plot_bgcolor: "rgba(0,0,0,0)", hovermode: "closest", legend: { orientation: "h", y: -0.05 },
                     xaxis: { visible: false }, yaxis: { visible: false, scaleanchor: "x" } };
    return Plotly.react(el, traces(), layout, CONFIG).then(function () {
      el.setAttribute("data-drawn", "1");
      el.setAttribute("data-points", String(data.points.length));
    });
  }

  function labelOf(latent) {
    const p = data.points.find((q) => q.latent === latent);
    return p && p.label ? p.label : "(unlabelled)";
  }

  document.addEventListener("DOMContentLoaded", function () {
    const el = document.getElementById("featuremap");
    if (!el || !window.Plotly) return;
    const info = document.getElementById("mapinfo");
    fetch(el.getAttribute("data-src"), { headers: { Accept: "application/json" } })
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error("HTTP " + r.status))))
      .then(function (d) {
        data = d;
        return draw(el);
      })
      .then(function () {
        el.on("plotly_hover", function (ev) {
          const i = ev.points[0].customdata;
          info.textContent = "#" + i + " " + labelOf(i);
        });
        el.on("plotly_click", function (ev) {
          const i = Number(ev.points[0].customdata);
          if (Number.isInteger(i)) window.location.assign(el.getAttribute("data-feature-base") + i);
        });
      })
      .catch(function (e) { info.textContent = "could not load the map: " + e.message; });
    document.querySelectorAll("[data-colour]").forEach(function (b) {
      b.addEventListener("click", function () {
        colourBy = b.getAttribute("data-colour");
        document.querySelectorAll("[data-colour]").forEach((o) => o.setAttribute("aria-pressed", String(o === b)));
        if (data) draw(el);
      });
    });
  });
})();
