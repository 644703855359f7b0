// autointerp pages: the live parts (interactive neuroscope, Layerscope). Plain JavaScript, no libraries.
"use strict";
const AI = (() => {
  function colour(v, scale) {
    if (v === null || v === undefined || !isFinite(v) || !scale) return "#ffffff";
    const x = Math.max(-1, Math.min(1, v / scale));
    if (x >= 0) { const l = Math.round(255 - 215 * x); return `rgb(255,${l},${l})`; }
    const l = Math.round(255 + 215 * x); return `rgb(${l},${l},255)`;
  }
  function showToken(t) { return t ? t.replace(/\n/g, "⏎").replace(/\t/g, "⇥") : "∅"; }
  function tokenSpan(text, value, bg) {
    const s = document.createElement("span");
    s.className = "tok"; s.textContent = showToken(text); s.style.background = bg;
    s.title = value === null ? "" : Number(value).toFixed(4);
    return s;
  }
  async function call(url, body) {
    const r = await fetch(url, body === undefined ? {} : {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    let data = null;
    try { data = await r.json(); } catch (e) { data = {detail: r.statusText}; }
    if (!r.ok) {
      const d = data && (data.message || data.detail);
      throw new Error(typeof d === "string" ? d : JSON.stringify(d));
    }
    return data;
  }
  function debounce(f, ms) { let t = null; return (...a) => { clearTimeout(t); t = setTimeout(() => f(...a), ms); }; }

  function neuronPage() {
    const toggleAll = document.getElementById("toggle-all");
    let allFull = false;
    document.querySelectorAll(".ex button.toggle").forEach(b => b.addEventListener("click", () => {
      const ex = b.closest(".ex"); ex.classList.toggle("full");
      b.textContent = ex.classList.contains("full") ? "window" : "full text";
    }));
    if (toggleAll) toggleAll.addEventListener("click", () => {
      allFull = !allFull;
      document.querySelectorAll(".ex").forEach(ex => ex.classList.toggle("full", allFull));
      toggleAll.textContent = allFull ? "show windows around the peak" : "show full texts";
    });
    scoreForm();
    const form = document.getElementById("live-form");
    if (!form) return;
    const text = document.getElementById("live-text"), out = document.getElementById("live-out");
    const status = document.getElementById("live-status");
    const {model, layer, neuron, scale} = form.dataset;
    let seq = 0;
    async function run() {
      if (!text.value.trim()) { out.textContent = ""; status.textContent = ""; return; }
      const mine = ++seq;
      status.textContent = "running…";
      try {
        const r = await call(`/api/${encodeURIComponent(model)}/activations`,
                             {text: text.value, layer: Number(layer), neuron: Number(neuron)});
        if (mine !== seq) return;
        out.replaceChildren(...r.tokens.map((t, i) => tokenSpan(t, r.activations[i], colour(r.activations[i], Number(scale)))));
        const mx = Math.max(...r.activations);
        status.textContent = `${r.tokens.length} tokens, max ${mx.toFixed(3)}`;
      } catch (e) { if (mine === seq) { status.textContent = ""; out.textContent = "Error: " + e.message; } }
    }
    form.addEventListener("submit", ev => { ev.preventDefault(); run(); });
    text.addEventListener("input", debounce(run, 400));
    // "load this example": an example's text into the box at the top, run at once
    function load(t) { text.value = t; form.scrollIntoView({block: "nearest"}); run(); }
    const top = document.getElementById("live-load");
    if (top) top.addEventListener("click", () => load(top.dataset.text));
    document.querySelectorAll(".ex button.load").forEach(b => b.addEventListener("click", () => {
      load(b.closest(".ex").dataset.text);
    }));
  }

  // "test your own explanation": the description's score beside the stored ones, and its rule
  function scoreForm() {
    const form = document.getElementById("score-form");
    if (!form) return;
    const text = document.getElementById("score-text"), out = document.getElementById("score-out");
    const status = document.getElementById("score-status");
    const {model, layer, neuron} = form.dataset;
    const fmt = v => (v === null || v === undefined) ? "—" : Number(v).toFixed(3);
    const cell = (tag, value, cls) => {
      const c = document.createElement(tag); c.textContent = value; if (cls) c.className = cls; return c;
    };
    const row = (label, score, extra) => {
      const tr = document.createElement("tr");
      tr.append(cell("th", label), cell("td", fmt(score), "score"), cell("td", extra || "", "muted"));
      return tr;
    };
    form.addEventListener("submit", async ev => {
      ev.preventDefault();
      if (!text.value.trim()) { status.textContent = "Write a description first."; return; }
      status.textContent = "scoring…"; out.replaceChildren();
      try {
        const r = await call(`/api/${encodeURIComponent(model)}/score/${layer}/${neuron}`, {text: text.value});
        const table = document.createElement("table"); table.className = "explain"; table.id = "score-result";
        const mine = r.status === "ok"
          ? `random ${fmt(r.score_random)} · AUPRC ${fmt(r.auprc)} · fires on ${(100 * r.fire_rate).toFixed(1)}% of the held-out tokens`
          : `${r.status}: ${r.error}`;
        table.append(row("your description", r.score, mine),
                     row("stored explanation", r.explanation_score,
                         (r.explanation || "") + (r.same_records === false ? " (scored on other held-out text)" : "")),
                     row("token baseline", r.baseline_score), row("N2G graph", r.n2g_score));
        const rule = document.createElement("p"); rule.className = "muted"; rule.id = "score-rule";
        rule.append(`rule (${r.compiled_by}): `, cell("code", r.rule === null ? "none" : JSON.stringify(r.rule)));
        out.replaceChildren(table, rule);
        status.textContent = r.status === "ok" ? "" : "no score";
      } catch (e) {
        status.textContent = "";
        out.replaceChildren(cell("p", "Error: " + e.message, "error"));
      }
    });
  }

  // Layerscope: one prompt over every layer as a picture (a row per token, a column per unit) with
  // a unit axis, hover (layer/unit, token, activation) and click (the neuron's page), and the
  // threshold view, a page at a time
  function layerPage() {
    const root = document.getElementById("layerscope");
    const model = root.dataset.model, nLayers = Number(root.dataset.nLayers);
    const harvested = root.dataset.harvested ? root.dataset.harvested.split(",").map(Number) : [];
    const perPage = Number(root.dataset.perPage) || 60;
    const DEFAULTS = {absolute: [3, 0], neuron: [0.5, 0.5]};
    let layer = Number(root.dataset.layer), prompt = null, offset = 0;
    const $ = id => document.getElementById(id);
    const api = `/api/${encodeURIComponent(model)}/layerscope`;
    const view = () => document.querySelector("input[name=ls-view]:checked").value;
    const units = () => view() === "mlp" ? prompt.d_mlp : prompt.d_model;
    // thresholds relative to a neuron's own max/min need its harvest: the MLP view of a harvested layer
    const canRelative = () => view() === "mlp" && harvested.includes(layer);
    let mode = root.dataset.gated === "true" ? "neuron" : "absolute";
    function setMode(m, keepValues) {
      const wanted = m;
      if (m === "neuron" && !canRelative()) m = "absolute";
      $("ls-mode").value = m;
      $("ls-mode").options[0].disabled = !canRelative();
      $("ls-mode-note").textContent = wanted === "neuron" && m !== "neuron"
        ? (view() === "mlp" ? `(layer ${layer} is not harvested: no max and min to scale by)`
                            : "(residual dimensions have no harvested max and min)") : "";
      if (!keepValues || $("ls-mode").dataset.mode !== m) {
        [$("ls-hi").value, $("ls-lo").value] = DEFAULTS[m];
      }
      $("ls-mode").dataset.mode = m;
      $("ls-hi-unit").textContent = m === "neuron" ? "× its max" : "";
      $("ls-lo-unit").textContent = m === "neuron" ? "× its min" : "";
    }
    function axis() {
      const n = units(), target = n / 10;
      const base = Math.pow(10, Math.floor(Math.log10(Math.max(target, 1))));
      const step = [1, 2, 5, 10].map(k => k * base).find(s => s >= target) || 10 * base;
      const ticks = [];
      for (let u = 0; u < n; u += step) {
        const s = document.createElement("span"); s.textContent = u;
        s.style.left = `${100 * (u + 0.5) / n}%`; ticks.push(s);
      }
      $("ls-axis").replaceChildren(...ticks);
      $("ls-axis-name").textContent = `${view() === "mlp" ? "neuron" : "residual dimension"} → (0-${n - 1})`;
    }
    function show() {
      if (!prompt) return;
      $("ls-layer").textContent = layer; $("ls-slider").value = layer;
      $("ls-image").src = `/img/${encodeURIComponent(model)}/layerscope/${prompt.prompt_id}/${layer}.png?view=${view()}`;
      $("ls-image").style.height = (prompt.n_tokens * 14) + "px";
      $("ls-gif").href = `/img/${encodeURIComponent(model)}/layerscope/${prompt.prompt_id}.gif?view=${view()}`;
      $("ls-scale").textContent = `colour scale ±${prompt.scales[view()][layer]} · ${view() === "mlp" ? prompt.d_mlp + " neurons" : prompt.d_model + " residual dimensions"} × ${prompt.n_tokens} tokens`;
      axis(); setMode(mode, true); offset = 0; threshold();
    }
    // hover: the unit's column of activations, fetched once per layer/view/unit
    const columns = new Map();
    let hoverSeq = 0;
    function unitAt(ev) {
      const r = $("ls-image").getBoundingClientRect();
      const unit = Math.floor((ev.clientX - r.left) / r.width * units());
      const tok = Math.floor((ev.clientY - r.top) / r.height * prompt.n_tokens);
      return (unit >= 0 && unit < units() && tok >= 0 && tok < prompt.n_tokens) ? {unit, tok} : null;
    }
    async function hover(ev) {
      if (!prompt) return;
      const at = unitAt(ev), mine = ++hoverSeq;
      if (!at) return;
      const v = view(), key = `${layer}/${v}/${at.unit}`, name = v === "mlp" ? "N" : "D";
      if (!columns.has(key)) columns.set(key, call(`${api}/${prompt.prompt_id}/${layer}/${at.unit}?view=${v}`));
      try {
        const col = await columns.get(key);
        if (mine !== hoverSeq) return;
        $("ls-hover").textContent = `L${layer}/${name}${at.unit} · token ${at.tok} ${JSON.stringify(prompt.tokens[at.tok])} · activation ${col.activations[at.tok].toFixed(3)}`;
      } catch (e) { columns.delete(key); $("ls-hover").textContent = "Error: " + e.message; }
    }
    $("ls-image").addEventListener("mousemove", hover);
    $("ls-image").addEventListener("click", ev => {
      const at = prompt && unitAt(ev);
      if (at && view() === "mlp") location.href = `/m/${encodeURIComponent(model)}/neuron/${layer}/${at.unit}`;
    });
    async function threshold() {
      const hi = Number($("ls-hi").value), lo = Number($("ls-lo").value), v = view(), m = $("ls-mode").value;
      try {
        const r = await call(`${api}/${prompt.prompt_id}/${layer}?hi=${hi}&lo=${lo}&view=${v}&thresholds=${m}&limit=${perPage}&offset=${offset}`);
        $("ls-count").textContent = `${r.n_matching} units match (${r.n_above} above, ${r.n_below} below)`;
        $("ls-page").textContent = r.units.length ? `showing ${r.offset + 1}-${r.offset + r.units.length} of ${r.n_matching}` : "";
        $("ls-page-prev").disabled = r.offset === 0;
        $("ls-page-next").disabled = r.offset + r.units.length >= r.n_matching;
        $("ls-threshold").replaceChildren(...r.units.map(u => {
          const row = document.createElement("div"); row.className = "unit toks";
          const a = document.createElement(v === "mlp" ? "a" : "span");
          a.textContent = `${v === "mlp" ? "neuron" : "dim"} ${u.unit}`;
          if (v === "mlp") a.href = `/m/${encodeURIComponent(model)}/neuron/${layer}/${u.unit}`;
          row.append(a, ...r.tokens.map((t, i) => {
            const x = u.activations[i];
            const up = u.hi_cut !== null && x > u.hi_cut, down = u.lo_cut !== null && x < u.lo_cut;
            return tokenSpan(t, x, up ? "rgb(255,120,120)" : (down ? "rgb(140,160,255)" : "#ffffff"));
          }));
          return row;
        }));
      } catch (e) { $("ls-count").textContent = "Error: " + e.message; }
    }
    async function runText(text) {
      $("ls-status").textContent = "running all layers…";
      try {
        prompt = await call(api, {text});
        columns.clear();
        $("ls-tokens").replaceChildren(...prompt.tokens.map(t => { const d = document.createElement("div"); d.textContent = showToken(t); return d; }));
        $("ls-result").hidden = false;
        $("ls-status").textContent = `${prompt.n_tokens} tokens`;
        show(); recent();
      } catch (e) { $("ls-status").textContent = "Error: " + e.message; }
    }
    async function recent() {
      const r = await call(api);
      $("ls-recent").replaceChildren(...r.prompts.map(p => {
        const a = document.createElement("a"); a.href = "#"; a.className = "recent-prompt"; a.dataset.text = p.text;
        a.textContent = p.text.slice(0, 40) + " "; return a;
      }));
    }
    $("ls-form").addEventListener("submit", ev => { ev.preventDefault(); runText($("ls-text").value); });
    $("ls-recent").addEventListener("click", ev => {
      const a = ev.target.closest(".recent-prompt"); if (!a) return;
      ev.preventDefault(); $("ls-text").value = a.dataset.text; runText(a.dataset.text);
    });
    $("ls-prev").addEventListener("click", () => { if (layer > 0) { layer--; show(); } });
    $("ls-next").addEventListener("click", () => { if (layer < nLayers - 1) { layer++; show(); } });
    $("ls-slider").addEventListener("input", () => { layer = Number($("ls-slider").value); show(); });
    document.querySelectorAll("input[name=ls-view]").forEach(r => r.addEventListener("change", show));
    $("ls-mode").addEventListener("change", () => { mode = $("ls-mode").value; setMode(mode, false); offset = 0; threshold(); });
    $("ls-apply").addEventListener("click", () => { offset = 0; threshold(); });
    $("ls-page-prev").addEventListener("click", () => { offset = Math.max(0, offset - perPage); threshold(); });
    $("ls-page-next").addEventListener("click", () => { offset += perPage; threshold(); });
    setMode(mode, false);
  }
  return {neuronPage, layerPage, colour};
})();
