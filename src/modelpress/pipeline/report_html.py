"""report.html: one self-contained page (inline CSS, plots as base64 PNG, no network)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from modelpress.bench.report import speed_words

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:60rem;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.pass{color:#17702a;font-weight:600}.fail{color:#a31515;font-weight:600}
img{max-width:100%}code,pre{background:#f6f6f6;padding:.1rem .3rem;font-size:.85rem}pre{padding:.6rem;overflow:auto}
"""


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _figure(w: float = 7, h: float = 3.2) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h))


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def latency_plot(latencies: dict[str, dict[str, Any] | None]) -> str:
    """Median with its 95% interval, p90 and p99 per model: the latency distribution in brief."""
    rows = [(k, v) for k, v in latencies.items() if v]
    if not rows:
        return "<p>no latency measured</p>"
    fig, ax = _figure(7, 0.6 + 0.6 * len(rows))
    for i, (label, s) in enumerate(rows):
        ax.plot([s["p50_ms"], s["p99_ms"]], [i, i], color="#bbb", lw=6, solid_capstyle="butt")
        ax.errorbar(s["p50_ms"], i, xerr=[[s["p50_ms"] - s["ci95_low_ms"]], [s["ci95_high_ms"] - s["p50_ms"]]], fmt="o", color="#1f5fa8", capsize=4)
        ax.plot(s["p90_ms"], i, "|", color="#444", ms=14)
        ax.plot(s["p99_ms"], i, "|", color="#a31515", ms=14)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_xscale("log")
    ax.set_xlabel("latency ms (dot: p50 with 95% CI; ticks: p90, red p99; bar to p99)")
    return _png(fig)


def prune_plot(layers: list[dict[str, Any]]) -> str:
    """Channels kept per pruned layer."""
    if not layers:
        return ""
    fig, ax = _figure(7, 0.5 + 0.3 * len(layers))
    names = [layer["name"] for layer in layers]
    ax.barh(names, [layer["original"] for layer in layers], color="#ddd", label="before")
    ax.barh(names, [layer["kept"] for layer in layers], color="#1f5fa8", label="after")
    ax.invert_yaxis()
    ax.set_xlabel("output channels")
    ax.legend()
    return _png(fig)


def sensitivity_plot(sens: dict[str, Any]) -> str:
    """Metric drop caused by quantizing each layer alone."""
    layers = (sens.get("layers") or [])[:40]  # most sensitive first; a long tail of ~0 says nothing
    if not layers:
        return ""
    fig, ax = _figure(7, 0.5 + 0.3 * len(layers))
    ax.barh([x["node"] for x in layers], [x["delta"] * 100 for x in layers], color="#c76b1a")
    ax.invert_yaxis()
    ax.set_xlabel(f"{sens.get('metric', 'metric')} drop (points) when only this layer is quantized")
    return _png(fig)


def pareto_plot(points: list[dict[str, Any]]) -> str:
    """Accuracy against latency for every searched configuration; the front in colour."""
    fig, ax = _figure(7, 4)
    for p in points:
        if p.get("latency_ms") is None or p.get("metric") is None:
            continue
        ax.scatter(p["latency_ms"], p["metric"] * 100, s=30 + 200 * (p.get("size_mb") or 0) / max(q.get("size_mb") or 1e-9 for q in points),
                   color="#1f5fa8" if p.get("pareto") else "#bbb", edgecolor="k", zorder=3)
        ax.annotate(p["name"], (p["latency_ms"], p["metric"] * 100), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel("p50 latency ms on the target (lower is better)")
    ax.set_ylabel("metric, % (higher is better)")
    ax.set_title("search: blue = Pareto front (accuracy / latency / size); marker area ∝ size")
    return _png(fig)


def _stage_reports(manifest: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None, list[dict[str, Any]]]:
    """Pruned layers, the sensitivity analysis, and the quantize stages' float-layer blocks."""
    layers: list[dict[str, Any]] = []
    sens = None
    floats: list[dict[str, Any]] = []
    for stage in manifest.get("lineage", {}).get("stages", []):
        report = stage.get("report") or {}
        if stage["kind"] == "prune":
            layers += [x for x in report.get("layers", []) if isinstance(x, dict) and "kept" in x]
        if stage["kind"] == "quantize":
            # the verb's report has its details at the top level; older manifests nest them
            choice = report.get("float_choice")
            sens = report.get("sensitivity") or (report.get("details") or {}).get("sensitivity") or sens
            if sens is None and choice:
                sens = {"metric": choice.get("metric"), "layers": choice.get("ranking") or []}
            if choice or report.get("keep_float"):
                floats.append({"choice": choice or {}, "keep_float": report.get("keep_float") or [],
                               "mixed": (report.get("mixed_precision") or {}).get("keep_float") or [],
                               "by_hand": (stage.get("config") or {}).get("keep_float") or []})
    return layers, sens, floats


def float_table(floats: list[dict[str, Any]]) -> str:
    """The layers the artifact leaves in float, each with why (measured sensitivity, recipe, mixed precision)."""
    rows = []
    for block in floats:
        choice = block["choice"]
        picked = {layer["node"]: layer for layer in choice.get("kept") or []}
        total = len(choice.get("ranking") or [])
        for node in block["keep_float"]:
            if node in picked:
                layer = picked[node]
                why = f"float_layers={choice.get('requested')}: rank {layer['rank']} of {total} by measured sensitivity"
                delta = _fmt(layer["delta"] * 100, 2)
            elif node in block["by_hand"]:
                why, delta = "keep_float in the recipe", "–"
            elif node in block["mixed"]:
                why, delta = "the quantizer's mixed precision (to meet its accuracy budget)", "–"
            else:
                why, delta = "kept float by the quantizer", "–"
            rows.append(f"<tr><td><code>{html.escape(node)}</code></td><td>{delta}</td><td>{html.escape(why)}</td></tr>")
    if not rows:
        return ""
    metric = next((b["choice"].get("metric") for b in floats if b["choice"].get("metric")), "metric")
    return (f"<table><tr><th>layer</th><th>{html.escape(str(metric))} drop (points) when only it is INT8</th><th>why it is float</th></tr>"
            + "".join(rows) + "</table>")


def render_report(manifest: dict[str, Any], search: dict[str, Any] | None = None) -> str:
    """Render the run described by a pipeline manifest (and optional search results) as HTML."""
    recipe = manifest.get("recipe", {})
    metrics = manifest.get("metrics", {})
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    verdict = metrics.get("verdict") or {}
    passed = verdict.get("passed")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>modelpress report: {html.escape(recipe.get('name', ''))}</title><style>{_CSS}</style></head><body>"]
    parts.append(f"<h1>modelpress: {html.escape(recipe.get('name', 'run'))}</h1>")
    parts.append(f"<p>model <code>{html.escape(str(recipe.get('model')))}</code> · data <code>{html.escape(str(recipe.get('data')))}</code> · "
                 f"target <code>{html.escape(str(manifest.get('target')))}</code></p>")
    if verdict:
        cls = "pass" if passed else "fail"
        parts.append(f"<p class='{cls}'>gate: {'PASSED' if passed else 'FAILED'} {html.escape('; '.join(verdict.get('reasons', [])))}</p>")
    b_lat, a_lat = before.get("latency") or {}, after.get("latency") or {}
    torch_lat = metrics.get("torch_fp32_latency") or {}
    rows = [
        ("metric (" + _fmt(before.get("metric")) + ")", _fmt(before.get("value"), 4), _fmt(after.get("value"), 4), f"drop {_fmt((verdict.get('accuracy_drop') or 0) * 100, 2)} pts"),
        ("p50 latency ms on " + _fmt(before.get("backend")), _fmt(b_lat.get("p50_ms")), _fmt(a_lat.get("p50_ms")), speed_words(verdict.get("speedup"))),
        ("p50 latency ms, PyTorch FP32 eager", _fmt(torch_lat.get("p50_ms")), "", speed_words(verdict.get("speedup_vs_torch"), suffix=" than eager")),
        ("model.onnx MB", _fmt(before.get("size_mb"), 4), _fmt(after.get("size_mb"), 4), f"{_fmt(verdict.get('size_ratio'), 2)}× smaller"),
    ]
    parts.append("<h2>Before / after</h2><table><tr><th></th><th>float</th><th>artifact</th><th>change</th></tr>")
    parts += [f"<tr><td>{a}</td><td>{b}</td><td>{c}</td><td>{d}</td></tr>" for a, b, c, d in rows]
    parts.append("</table>")
    parts.append("<h2>Latency distributions</h2>" + latency_plot({"float (target)": b_lat, "float (PyTorch eager)": torch_lat, "artifact (target)": a_lat}))
    layers, sens, floats = _stage_reports(manifest)
    if layers:
        parts.append("<h2>Pruning: channels kept per layer</h2>" + prune_plot(layers))
    if sens:
        parts.append("<h2>Per-layer quantization sensitivity</h2>" + sensitivity_plot(sens))
    if table := float_table(floats):
        parts.append("<h2>Layers left in float</h2>" + table)
    if search and search.get("points"):
        parts.append("<h2>Search: Pareto front</h2>" + pareto_plot(search["points"]))
        parts.append("<table><tr><th>config</th><th>metric</th><th>p50 ms</th><th>MB</th><th>front</th></tr>")
        parts += [f"<tr><td>{html.escape(p['name'])}</td><td>{_fmt(p.get('metric'), 4)}</td><td>{_fmt(p.get('latency_ms'))}</td><td>{_fmt(p.get('size_mb'), 4)}</td><td>{'★' if p.get('pareto') else ''}</td></tr>" for p in search["points"]]
        parts.append("</table>")
    rounds = manifest.get("gate_rounds") or []
    if rounds:
        parts.append("<h2>Gate rounds</h2><table><tr><th>round</th><th>back-off</th><th>stages</th><th>result</th></tr>")
        for r in rounds:
            v = r.get("verdict") or {}
            res = r.get("error") or ("passed" if v.get("passed") else "; ".join(v.get("reasons", [])))
            stages = ", ".join(f"{s['kind']}" + (f" {s['config'].get('ratio')}" if s["kind"] == "prune" else "") + (f" {s['config'].get('mode')}" if s["kind"] == "quantize" else "")
                               + (f", {s['config']['float_layers']} most sensitive float" if s["kind"] == "quantize" and s["config"].get("float_layers") else "")
                               for s in r.get("stages", []))
            parts.append(f"<tr><td>{r['index'] + 1}</td><td>{html.escape(str(r.get('backoff_step') or '–'))}</td><td>{html.escape(stages)}</td><td>{html.escape(res)}</td></tr>")
        parts.append("</table>")
    env = manifest.get("environment", {})
    parts.append("<h2>Provenance</h2><pre>" + html.escape(
        f"data: {manifest.get('data')}\nseeds: {manifest.get('seeds')}\nlibraries: {env.get('libraries')}\nhardware: {env.get('hardware')}") + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_search(search: dict[str, Any], plot_html: str | None = None) -> str:
    """Render a search.json as a page: the Pareto plot and the table of every configuration."""
    b = search.get("baseline", {})
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>modelpress search: {html.escape(search.get('recipe', ''))}</title><style>{_CSS}</style></head><body>",
             f"<h1>Search: {html.escape(search.get('recipe', ''))}</h1>",
             f"<p>{len(search.get('points', []))} configurations on {html.escape(str(search.get('backend')))} ({html.escape(str(search.get('engine')))}, "
             f"{search.get('wall_s', 0):.0f}s). Float baseline: metric {_fmt(b.get('metric'), 4)}, p50 {_fmt(b.get('latency_ms'))} ms, {_fmt(b.get('size_mb'), 4)} MB.</p>",
             "<h2>Accuracy / latency / size: the Pareto front (★)</h2>",
             plot_html or pareto_plot(search.get("points", [])),
             "<table><tr><th>config</th><th>metric</th><th>p50 ms</th><th>MB</th><th>front</th><th>error</th></tr>"]
    parts += [f"<tr><td>{html.escape(p['name'])}</td><td>{_fmt(p.get('metric'), 4)}</td><td>{_fmt(p.get('latency_ms'))}</td><td>{_fmt(p.get('size_mb'), 4)}</td>"
              f"<td>{'★' if p.get('pareto') else ''}</td><td>{html.escape(str(p.get('error') or ''))}</td></tr>" for p in search.get("points", [])]
    parts.append("</table></body></html>")
    return "\n".join(parts)
