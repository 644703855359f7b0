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

  function layerPage() {
    const root = document.getElementById("layerscope");
    const model = root.dataset.model, nLayers = Number(root.dataset.nLayers);
    let layer = Number(root.dataset.layer), prompt = null;
    const $ = id => document.getElementById(id);
    const view = () => document.querySelector("input[name=ls-view]:checked").value;
    function show() {
      if (!prompt) return;
      $("ls-layer").textContent = layer; $("ls-slider").value = layer;
      $("ls-image").src = `/img/${encodeURIComponent(model)}/layerscope/${prompt.prompt_id}/${layer}.png?view=${view()}`;
      $("ls-image").style.height = (prompt.n_tokens * 14) + "px";
      $("ls-gif").href = `/img/${encodeURIComponent(model)}/layerscope/${prompt.prompt_id}.gif?view=${view()}`;
      $("ls-scale").textContent = `colour scale ±${prompt.scales[view()][layer]} · ${view() === "mlp" ? prompt.d_mlp + " neurons" : prompt.d_model + " residual dimensions"} × ${prompt.n_tokens} tokens`;
      threshold();
    }
    async function threshold() {
      const hi = Number($("ls-hi").value), lo = Number($("ls-lo").value), v = view();
      try {
        const r = await call(`/api/${encodeURIComponent(model)}/layerscope/${prompt.prompt_id}/${layer}?hi=${hi}&lo=${lo}&view=${v}&limit=60`);
        $("ls-count").textContent = `${r.n_matching} units match (${r.n_above} above, ${r.n_below} below); showing ${r.units.length}`;
        $("ls-threshold").replaceChildren(...r.units.map(u => {
          const row = document.createElement("div"); row.className = "unit toks";
          const a = document.createElement(v === "mlp" ? "a" : "span");
          a.textContent = `${v === "mlp" ? "neuron" : "dim"} ${u.unit}`;
          if (v === "mlp") a.href = `/m/${encodeURIComponent(model)}/neuron/${layer}/${u.unit}`;
          row.append(a, ...r.tokens.map((t, i) => {
            const x = u.activations[i];
            return tokenSpan(t, x, x > hi ? "rgb(255,120,120)" : (x < lo ? "rgb(140,160,255)" : "#ffffff"));
          }));
          return row;
        }));
      } catch (e) { $("ls-count").textContent = "Error: " + e.message; }
    }
    async function runText(text) {
      $("ls-status").textContent = "running all layers…";
      try {
        prompt = await call(`/api/${encodeURIComponent(model)}/layerscope`, {text});
        $("ls-tokens").replaceChildren(...prompt.tokens.map(t => { const d = document.createElement("div"); d.textContent = showToken(t); return d; }));
        $("ls-result").hidden = false;
        $("ls-status").textContent = `${prompt.n_tokens} tokens`;
        show(); recent();
      } catch (e) { $("ls-status").textContent = "Error: " + e.message; }
    }
    async function recent() {
      const r = await call(`/api/${encodeURIComponent(model)}/layerscope`);
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
    $("ls-apply").addEventListener("click", threshold);
  }
  return {neuronPage, layerPage, colour};
})();
