// modelpress rollout dashboard: polls /management/status and redraws. No dependencies.
"use strict";

const POLL_MS = 1000;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "style") node.setAttribute("style", value);
    else node.dataset[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function pct(x) { return x === null || x === undefined ? "–" : `${(100 * x).toFixed(x > 0 && x < 0.01 ? 2 : 1)}%`; }
function ms(x) { return x === null || x === undefined ? "–" : `${x.toFixed(x < 10 ? 2 : 1)} ms`; }
function num(x, digits = 1) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); }

function describePolicy(policy) {
  switch (policy.kind) {
    case "single": return `single → ${policy.version}`;
    case "ab": return "A/B " + Object.entries(policy.weights).map(([v, w]) => `${v}:${pct(w)}`).join(" / ");
    case "shadow": return `shadow ${policy.candidate} (${pct(policy.share)} mirrored) behind ${policy.primary}`;
    case "canary": return `canary ${policy.candidate} vs ${policy.stable}`;
    default: return policy.kind;
  }
}

function splitBar(split) {
  const bar = el("div", { class: "bar", split: "" });
  for (const [version, share] of Object.entries(split)) {
    if (share <= 0) continue;
    const part = el("span", { class: "split", version, share: String(share) }, `${version} ${pct(share)}`);
    part.style.width = `${100 * share}%`;
    bar.append(part);
  }
  return bar;
}

function versionsTable(model) {
  const table = el("table", { class: "versions" },
    el("tr", {}, el("th", {}, "version"), el("th", {}, "share"), el("th", {}, "QPS"), el("th", {}, "p50"),
      el("th", {}, "p99"), el("th", {}, "errors"), el("th", {}, "in flight"), el("th", {}, "queue"), el("th", {}, "state")));
  for (const [version, info] of Object.entries(model.versions)) {
    const live = info.live || {};
    const share = model.split[version] ?? 0;
    const state = info.routed ? (share > 0 ? "serving" : "shadow") : info.warm ? "warm" : "loaded";
    table.append(el("tr", { version },
      el("td", {}, version), el("td", {}, pct(share)), el("td", { class: "qps" }, num(live.qps)),
      el("td", {}, ms(live.p50_ms)), el("td", {}, ms(live.p99_ms)), el("td", {}, live.errors ?? 0),
      el("td", {}, info.in_flight), el("td", {}, info.queue), el("td", {}, state)));
  }
  return table;
}

function shadowBlock(shadow) {
  return el("div", { class: "shadow" },
    el("h3", {}, "shadow comparison"),
    el("div", {}, "requests compared: ", el("b", {}, shadow.requests), " · top-1 agreement: ",
      el("b", { class: "agreement" }, pct(shadow.top1_agreement)), " · max |Δ|: ", num(shadow.max_abs_diff, 4),
      " · mean KL: ", num(shadow.mean_kl, 5), " · shadow errors: ", shadow.errors));
}

function canaryBlock(canary) {
  const done = canary.state !== "running";
  const stepShare = (canary.step + (done ? 1 : 0)) / canary.steps.length;
  const tests = el("table", { class: "gate" },
    el("tr", {}, el("th", {}, "test"), el("th", {}, "n"), el("th", {}, "rate"), el("th", {}, "p0 → p1"), el("th", {}, "LLR"), el("th", {}, "verdict")));
  for (const [name, t] of Object.entries(canary.gate.tests)) {
    tests.append(el("tr", {}, el("td", {}, name), el("td", {}, t.n), el("td", {}, pct(t.rate)),
      el("td", {}, `${pct(t.p0)} → ${pct(t.p1)}`), el("td", {}, `${num(t.llr, 2)} in [${num(t.lower, 2)}, ${num(t.upper, 2)}]`),
      el("td", { class: `verdict-${t.verdict}` }, t.verdict || "–")));
  }
  const bar = el("div", { class: "progress" }, el("div", {}));
  bar.firstChild.style.width = `${100 * stepShare}%`;
  return el("div", { class: "canary" },
    el("h3", {}, "canary"),
    el("div", {}, "state: ", el("b", { class: `state-${canary.state}` }, canary.state), ` · step ${canary.step + 1}/${canary.steps.length}`,
      ` (candidate share ${pct(canary.share)}) · ${canary.samples} candidate samples`),
    bar, el("div", { class: "muted" }, canary.reason), tests);
}

function modelCard(model) {
  const card = el("section", { class: "model", model: model.model },
    el("h2", {}, model.model),
    el("div", {}, "policy: ", el("span", { class: "policy" }, describePolicy(model.policy))),
    el("h3", {}, "traffic split"), splitBar(model.split),
    el("h3", {}, "versions"), versionsTable(model));
  if (model.shadow) card.append(shadowBlock(model.shadow));
  if (model.canary) card.append(canaryBlock(model.canary));
  if (model.previous) card.append(el("div", { class: "muted" }, `rollback target: ${describePolicy(model.previous)}`));
  return card;
}

async function refresh() {
  const updated = document.getElementById("updated");
  try {
    const response = await fetch("/management/status", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const status = await response.json();
    document.getElementById("models").replaceChildren(...status.models.map(modelCard));
    document.getElementById("shadow-runs").textContent = status.shadow.runs;
    document.getElementById("shadow-shed").textContent = status.shadow.shed;
    updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    updated.className = "muted";
    document.body.dataset.loaded = "true";
  } catch (err) {
    updated.textContent = `cannot reach the server: ${err.message}`;
    updated.className = "error";
  }
}

refresh();
setInterval(refresh, POLL_MS);
