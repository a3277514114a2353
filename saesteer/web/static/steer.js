// Steering playground: edit rows, generate default vs steered, and a strength sweep.
// Generation goes through the OpenAI-compatible API (/v1/completions with the "steering" field),
// the same API other programs use; the store id is the model id there. An edit row may name
// another store served over the same model (`data-stores`, the page's own first): its edit goes in
// the same request with "sae": that store's id, as any /v1 client would send it.
// Every string from the server or the user is written with textContent, never as HTML, and model
// text and labels drawn first (`drawn`, readable.js: control, bidi and invisible characters as marks).
"use strict";
(function () {
  const form = document.getElementById("steer-form");
  if (!form) return;
  const sid = form.dataset.store;
  const stores = JSON.parse(form.dataset.stores);  // [{id, name, hook, d_sae}], the page's store first
  const storeById = new Map(stores.map((s) => [s.id, s]));
  const maxEdits = Number(form.dataset.maxEdits);
  const maxRaw = Number(form.dataset.maxAbsStrength);
  const maxMult = Number(form.dataset.maxAbsMultiple);
  const maxPoints = Number(form.dataset.maxSweepPoints);
  const list = document.getElementById("edits");
  const statusEl = document.getElementById("status");
  const storeApi = (id) => "/api/stores/" + encodeURIComponent(id);

  // features.drawing.readable, as the server draws every other page's text (readable.js, with the
  // server's rule): a U+202E in a continuation would reorder the rest of it.
  const drawn = window.saesteerReadable(JSON.parse(form.dataset.readableRule));

  function el(tag, props, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "text") e.textContent = v;
      else if (k === "class") e.className = v;
      else e.setAttribute(k, v);
    }
    (children || []).forEach((c) => e.appendChild(c));
    return e;
  }
  function options(select, pairs, chosen) {
    pairs.forEach(([value, text]) => {
      const o = el("option", { value: value, text: text });
      if (value === chosen) o.selected = true;
      select.appendChild(o);
    });
  }
  function setStatus(node, text, kind) {
    node.textContent = text || "";
    node.className = "status" + (kind ? " " + kind : "");
  }

  const labelCache = new Map();  // "store id/latent" -> the label as drawn
  // `target.dataset.shows`: the latent the label is for; an answer for another one (the row's latent or
  // SAE changed while it was on its way) is cached, not shown
  async function lookupLabel(store, idx, target) {
    const dSae = store.d_sae;
    const key = store.id + "/" + idx;
    target.dataset.shows = key;
    if (!(idx >= 0 && idx < dSae)) { target.textContent = "not a feature (0–" + (dSae - 1) + ")"; return; }
    if (labelCache.has(key)) { target.textContent = labelCache.get(key); return; }
    target.textContent = "…";
    let shown = "";
    try {
      const r = await fetch(storeApi(store.id) + "/features/" + idx, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      shown = drawn(r.ok ? ((await r.json()).summary.label || "unlabelled") : "unknown feature");
      labelCache.set(key, shown);
    } catch (e) { /* no label shown */ }
    if (target.dataset.shows === key) target.textContent = shown;
  }
  // the store a row edits: its SAE picker's, or the page's when only the page's store steers
  function rowStore(li) {
    const pick = li.querySelector(".fstore");
    return storeById.get(pick ? pick.value : sid);
  }

  function makeRow(li, latent, label, recommended) {
    li.className = "edit";
    li.textContent = "";
    const featInput = el("input", { type: "number", min: "0", step: "1", "aria-label": "feature index", class: "fidx" });
    if (latent !== null && latent !== undefined && latent !== "") featInput.value = String(latent);
    const flabel = el("span", { class: "flabel" });
    const feat = el("div", { class: "feat" });
    if (stores.length > 1) {
      const pick = el("select", { "aria-label": "the SAE (store) this edit steers", class: "fstore" });
      options(pick, stores.map((s) => [s.id, drawn(s.name + (s.hook ? " · " + s.hook : ""))]), sid);
      pick.addEventListener("change", () => {
        featInput.max = String(rowStore(li).d_sae - 1);
        strength.removeAttribute("title");  // the page's store's recommendation, not this SAE's
        if (featInput.value !== "") lookupLabel(rowStore(li), Number(featInput.value), flabel);
      });
      feat.appendChild(pick);
    }
    feat.appendChild(featInput);
    feat.appendChild(flabel);
    featInput.max = String(storeById.get(sid).d_sae - 1);
    if (featInput.value !== "") {
      if (label) labelCache.set(sid + "/" + Number(featInput.value), drawn(label));  // the page's label: shown from the cache
      lookupLabel(storeById.get(sid), Number(featInput.value), flabel);
    }
    let timer = null;
    featInput.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        if (featInput.value !== "") lookupLabel(rowStore(li), Number(featInput.value), flabel);
        else { flabel.textContent = ""; flabel.dataset.shows = ""; }
      }, 250);
    });
    const mode = el("select", { "aria-label": "operation", class: "fmode" });
    options(mode, [["add", "add"], ["clamp", "clamp to"], ["scale", "scale by"], ["ablate", "ablate"]], "add");
    const start = recommended !== undefined && recommended !== "" && isFinite(Number(recommended)) ? String(Number(Number(recommended).toPrecision(3))) : "4";
    const strength = el("input", { type: "number", step: "any", value: start, "aria-label": "strength", class: "fstrength" });
    if (start !== "4") strength.title = "the store's recommended strength for this feature";
    const unit = el("select", { "aria-label": "strength unit", class: "funit" });
    options(unit, [["max_act", "× max"], ["raw", "raw"]], "max_act");
    mode.addEventListener("change", () => {
      const ablate = mode.value === "ablate";
      strength.disabled = ablate; unit.disabled = ablate || mode.value === "scale";
      if (mode.value === "scale" && strength.value === "4") strength.value = "2";
    });
    const rm = el("button", { type: "button", class: "btn icon", "aria-label": "remove this edit", title: "remove", text: "✕" });
    rm.addEventListener("click", () => {
      // the focus goes to the row now in its place (or before it), else "+ Add": not lost to the page
      const near = li.nextElementSibling || li.previousElementSibling;
      li.remove(); updateAdd();
      (near ? near.querySelector(".rm button") : addBtn).focus();
    });
    li.appendChild(feat);
    li.appendChild(el("div", { class: "mode" }, [mode]));
    li.appendChild(el("div", { class: "str" }, [strength]));
    li.appendChild(el("div", { class: "unit" }, [unit]));
    li.appendChild(el("div", { class: "rm" }, [rm]));
    return li;
  }
  const addBtn = document.getElementById("add-edit");
  function updateAdd() { addBtn.disabled = list.children.length >= maxEdits; }
  addBtn.addEventListener("click", () => {
    if (list.children.length >= maxEdits) return;
    const li = makeRow(el("li"), "", "");
    list.appendChild(li);
    li.querySelector("input").focus();
    updateAdd();
  });
  Array.from(list.children).forEach((li) => makeRow(li, li.dataset.latent, li.dataset.label, li.dataset.strength));
  if (!list.children.length) list.appendChild(makeRow(el("li"), "", ""));
  updateAdd();

  // the rows' edits; none is an error unless `noneOk` (a preset steers alone): a row that cannot be
  // sent is refused either way, never dropped
  function readEdits(noneOk) {
    const edits = [];
    for (const li of list.children) {
      const f = li.querySelector(".fidx").value.trim();
      if (f === "") continue;
      const latent = Number(f);
      const store = rowStore(li);
      const where = stores.length > 1 ? "store " + drawn(store.name) : "this store";
      if (!Number.isInteger(latent) || latent < 0 || latent >= store.d_sae) throw new Error("feature " + f + " is not in " + where + " (0–" + (store.d_sae - 1) + ")");
      const mode = li.querySelector(".fmode").value;
      const unit = mode === "scale" ? "raw" : li.querySelector(".funit").value;
      const s = mode === "ablate" ? 0 : Number(li.querySelector(".fstrength").value);
      if (!isFinite(s)) throw new Error("strength of feature " + latent + " must be a number");
      const cap = (unit === "max_act" || mode === "scale") ? maxMult : maxRaw;
      if (Math.abs(s) > cap) throw new Error("strength of feature " + latent + " is beyond ±" + cap);
      edits.push({ store: store.id, latent: latent, op: mode, value: s, unit: mode === "ablate" ? "raw" : unit });
    }
    if (!edits.length && !noneOk) throw new Error("pick at least one feature to steer with");
    return edits;
  }
  function readGen() {
    const prompt = document.getElementById("prompt").value;
    if (!prompt.trim()) throw new Error("write a prompt to continue");
    return {
      prompt: prompt,
      max_new_tokens: Number(document.getElementById("max-new").value),
      temperature: Number(document.getElementById("temperature").value),
      seed: Number(document.getElementById("seed").value),
    };
  }
  async function post(path, body) {
    const r = await fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    });
    let data = null;
    try { data = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok) {
      const msg = data && (typeof data.detail === "string" ? data.detail : (data.error && data.error.message));
      throw new Error(typeof msg === "string" && msg ? msg : ("request failed (" + r.status + ")"));
    }
    return data;
  }
  const presetSel = document.getElementById("preset");
  async function loadPresets() {
    if (!presetSel) return;
    try {
      const r = await fetch("/v1/models/" + encodeURIComponent(sid), { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!r.ok) return;
      const names = ((await r.json()).saesteer || {}).presets || [];
      names.forEach((n) => presetSel.appendChild(el("option", { value: n, text: n })));
      presetSel.closest(".presetrow").hidden = names.length === 0;
    } catch (e) { /* no presets shown */ }
  }
  loadPresets();
  function completion(gen, steering) {
    const body = { model: sid, prompt: gen.prompt, max_tokens: gen.max_new_tokens, temperature: gen.temperature, seed: gen.seed };
    if (steering) body.steering = steering;
    return post("/v1/completions", body);
  }
  function describe(edits) {  // the edits as the API applied them (presets expanded), e.g. "12:add=2x@generated"
    return edits.join(", ");
  }

  const genBtn = document.getElementById("generate");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    let gen, steering;
    try {
      const preset = presetSel && presetSel.value ? presetSel.value : null;
      const edits = readEdits(preset !== null);
      gen = readGen();
      // an edit of another store's SAE names it, as the API takes it ("sae": its id)
      steering = { edits: edits.map((e) => Object.assign({ latent: e.latent, op: e.op, value: e.op === "ablate" ? null : e.value, unit: e.unit },
                                                          e.store === sid ? {} : { sae: e.store })) };
      if (preset) steering.preset = preset;
    } catch (e) { setStatus(statusEl, e.message, "error"); return; }
    genBtn.disabled = true;
    setStatus(statusEl, "generating…", "busy");
    try {
      const t0 = performance.now();
      const [base, steered] = await Promise.all([completion(gen, null), completion(gen, steering)]);
      // a continuation carries its own leading space or line break: prompt + continuation as written
      const res = { prompt: gen.prompt, default: base.choices[0].text, steered: steered.choices[0].text,
                    edits: steered.steering ? steered.steering.edits : [] };
      document.getElementById("out-prompt-a").textContent = drawn(res.prompt);
      document.getElementById("out-prompt-b").textContent = drawn(res.prompt);
      document.getElementById("out-default").textContent = drawn(res.default);
      document.getElementById("out-steered").textContent = drawn(res.steered);
      document.getElementById("out-edits").textContent = describe(res.edits);
      document.getElementById("compare").hidden = false;
      setStatus(statusEl, "done in " + ((performance.now() - t0) / 1000).toFixed(1) + " s", "");
    } catch (e) {
      setStatus(statusEl, e.message, "error");
    } finally { genBtn.disabled = false; }
  });

  const sweepForm = document.getElementById("sweep-form");
  const sweepStatus = document.getElementById("sweep-status");
  const sweepBtn = document.getElementById("sweep-run");
  sweepForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    let body, sweepPath;
    try {
      const edits = readEdits(false);
      const a = Number(document.getElementById("sweep-from").value), b = Number(document.getElementById("sweep-to").value);
      const n = Math.round(Number(document.getElementById("sweep-n").value));
      if (!isFinite(a) || !isFinite(b)) throw new Error("give numbers for the sweep range");
      if (!(n >= 2 && n <= maxPoints)) throw new Error("points must be between 2 and " + maxPoints);
      if (edits[0].op === "ablate") throw new Error("the first edit ablates: nothing to sweep; use add, clamp or scale");
      const values = [];
      for (let i = 0; i < n; i++) values.push(Number((a + (b - a) * i / (n - 1)).toPrecision(6)));
      const first = edits[0];  // swept on the store whose SAE it edits
      sweepPath = storeApi(first.store) + "/sweep";
      body = Object.assign(readGen(), { edit: { latent: first.latent, op: first.op, value: first.value, unit: first.unit }, values: values });
    } catch (e) { setStatus(sweepStatus, e.message, "error"); return; }
    sweepBtn.disabled = true;
    setStatus(sweepStatus, "sweeping " + body.values.length + " values…", "busy");
    try {
      const res = await post(sweepPath, body);
      const out = document.getElementById("sweep-out");
      out.hidden = false;
      document.getElementById("sweep-concept").textContent = "concept: " + res.concept;
      document.getElementById("sweep-fluency").textContent = "fluency: " + res.fluency;
      const fmt = (v, d) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
      const rows = document.getElementById("sweep-rows");
      rows.textContent = "";
      res.points.forEach((p) => {
        const tr = el("tr", {}, [
          el("td", { class: "num", text: String(p.value) }),
          el("td", { class: "num", text: fmt(p.concept, 2) }),
          el("td", { class: "num", text: fmt(p.fluency, 2) }),
          el("td", { class: "num opt", text: fmt(p.perplexity, 1) }),
          el("td", { text: drawn(p.text) }),
        ]);
        if (res.recommended !== null && p.value === res.recommended) tr.className = "best";
        rows.appendChild(tr);
      });
      const chart = document.getElementById("sweep-chart");
      if (window.saesteerCharts && window.Plotly) {
        const xs = res.points.map((p) => p.value);
        await window.saesteerCharts.curve(chart, {
          x: xs,
          series: [{ name: "concept", y: res.points.map((p) => p.concept) },
                   { name: "fluency", y: res.points.map((p) => p.fluency) },
                   { name: "aggregate", y: res.points.map((p) => p.aggregate) }],
          y2: { name: "perplexity", y: res.points.map((p) => p.perplexity) },
          mark: res.recommended,
        });
        chart.setAttribute("data-drawn", "1");
      }
      setStatus(sweepStatus, res.verdict || (res.recommended === null ? "no strength works" : "recommended strength: " + res.recommended), "");
    } catch (e) {
      setStatus(sweepStatus, e.message, "error");
    } finally { sweepBtn.disabled = false; }
  });
})();
