"""Reports people read: one self-contained HTML file (plots embedded as PNG data, no network)
and a Markdown summary beside it, from a run history.

The page says what was evaluated and how (job, reference, when each entry ran, engine,
package versions), then one section per metric with its results (units in every header and
axis) and the plots the metric declares. It knows no metric by name: everything comes from the
declarations stored in the history.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from typing import Any

import numpy as np

from shardeval.pipeline.io.atomic import atomic_file, claim_output, is_stream
from shardeval.workflows import madeby
from shardeval.workflows.history import History, HistoryError
from shardeval.workflows.intervals import interval_of, noise_lines, within_noise
from shardeval.workflows.job_per_sample import worst_section
from shardeval.workflows.madeby import series_of

__all__ = ["markdown_path", "numerical_zero_floor", "series_of", "write_report"]

#: Marks our pages and summaries, so that ``report`` replaces only files it wrote.
GENERATOR = "shardeval report"
_HTML_MARK = f'<meta name="generator" content="{GENERATOR}">'
_MD_MARK = f"<!-- {GENERATOR} -->"


def _starts_with(path: str, mark: str, limit: int = 4096) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return mark in fh.read(limit)
    except OSError:
        return False


def markdown_path(out: str) -> str:
    return os.path.splitext(out)[0] + ".md"


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _label(name: str, units: dict[str, str]) -> str:
    unit = units.get(name, "")
    return f"{name} [{unit}]" if unit else name


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _cell(row: dict[str, Any], metric: str, name: str) -> str:
    """A result as a table shows it, marked when it no longer describes its store."""
    text = _fmt(row.get(name))
    return f"{text} (stale)" if metric in row["stale"] and row.get(name) is not None else text


def _table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{cells}</tr>{body}</table>"


def numerical_zero_floor(values: np.ndarray) -> float:
    """The value at or below which the eigenvalues of a d × d covariance, ``values``, are
    numerically zero: λ_max · d · ε. A symmetric eigen-solver in float64 computes each
    eigenvalue to about d·ε·‖Σ‖ (ε: float64's machine epsilon), so below that the values are
    rounding, not a property of the data (the whole tail past rank N − 1 when N ≤ d)."""
    top = float(np.max(np.abs(values))) if values.size else 0.0
    return top * values.size * float(np.finfo(np.float64).eps)


def _steps_plot(ax: Any, spec: dict[str, Any], ds: Any, rows: list[dict[str, Any]]) -> str:
    """Scalar results over the steps. Only entries of one series (names that differ only in a
    trailing number, each with a step) whose features were made the same way (network,
    resize, weights) are joined by a line: a step is comparable within one training run and
    one way of making features, and entries named otherwise (a baseline, the reference
    against itself) or made otherwise are not points of one curve, so each is drawn apart.
    Returns the x label."""
    from matplotlib.ticker import MaxNLocator

    have_steps = all(r["step"] >= 0 for r in rows)
    groups: dict[Any, list[int]] = {}
    for i, r in enumerate(rows):
        way = madeby.key(r.get("features_made_by"))
        key = (series_of(r["name"]), way) if have_steps else f"\0{i}"  # no steps: nothing joins
        groups.setdefault(key, []).append(i)
    # A series split by how its features were made names the way on each line.
    ways: dict[str, set[Any]] = {}
    for r in rows:
        ways.setdefault(series_of(r["name"]), set()).add(madeby.key(r.get("features_made_by")))
    for name in spec["values"]:
        if name not in ds.variables:
            continue
        for members in groups.values():
            x = [rows[i]["step"] if have_steps else i for i in members]
            ys = [np.nan if rows[i].get(name) is None else rows[i][name] for i in members]
            first = rows[members[0]]
            how = ""
            if have_steps and len(ways[series_of(first["name"])]) > 1:
                how = f", {madeby.short(first.get('features_made_by'))}"
            # Error bars where the entries recorded an interval («ci»).
            bounds = [interval_of(rows[i], name) for i in members]
            yerr = None
            if any(b is not None for b in bounds):
                spans = [
                    [0.0, 0.0] if b is None else [y - b[0], b[1] - y]
                    for y, b in zip(ys, bounds, strict=True)
                ]
                yerr = np.array(spans).T
            if len(members) > 1:
                label = f"{name} ({series_of(first['name']) or 'entries'} …{how})"
                style: dict[str, Any] = {"marker": "o"}
            else:
                label = f"{name} ({first['name']}{how})"
                style = {"marker": "s", "linestyle": "None"}
            if yerr is None:
                ax.plot(x, ys, label=label, **style)
            else:
                ax.errorbar(x, ys, yerr=yerr, capsize=3, label=label, **style)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return "training step" if have_steps else "entry (no steps recorded)"


def _curve_plot(ax: Any, spec: dict[str, Any], ds: Any, rows: list[dict[str, Any]]) -> str:
    """The latest entry's arrays against their index. On a log axis the numerically zero
    values (:func:`numerical_zero_floor`) are cut, not drawn as rounding noise down to 1e-300.
    Returns what the caption adds ("" when nothing was cut)."""
    latest = rows[-1]["name"]
    idx = int(np.flatnonzero(ds["name"].values.astype(str) == latest)[0])
    cut = []
    for name in spec["values"]:
        if name not in ds.variables:
            continue
        y = np.asarray(ds[name].values[idx], dtype=np.float64)
        y = y[np.isfinite(y)]
        if spec.get("log"):
            floor = numerical_zero_floor(y)
            kept = y > floor
            if not kept.all():
                cut.append(f"{int((~kept).sum())} of {name} (at most {floor:.3g})")
            y = y[kept]
        ax.plot(np.arange(1, y.size + 1), y, label=f"{name} ({latest})")
    ax.set_xlabel("index (largest first)")
    if not cut:
        return ""
    return (
        "Eigenvalues at or below λ_max·d·ε (float64's rounding of the eigen-solver, ε its "
        f"machine epsilon) are numerically zero and not drawn: {'; '.join(cut)}."
    )


def _plot(spec: dict[str, Any], ds: Any, rows: list[dict[str, Any]], units: dict[str, str]) -> str:
    """One declared plot as an HTML figure ("" when none of its values are in the history)."""
    if not any(name in ds.variables for name in spec["values"]):
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    unit = next((units[v] for v in spec["values"] if units.get(v)), "")
    ax.set_ylabel(f"{spec['ylabel']} [{unit}]" if unit else spec["ylabel"])
    note = ""
    if spec["kind"] == "steps":
        ax.set_xlabel(_steps_plot(ax, spec, ds, rows))
    else:
        note = _curve_plot(ax, spec, ds, rows)
    if spec.get("log"):
        ax.set_yscale("log")
    if len(ax.get_lines()) > 1:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    data = _png(fig)
    plt.close(fig)
    title = html.escape(spec["title"])
    caption = title + (f" {html.escape(note)}" if note else "")
    return (
        f'<figure><img alt="{title}" src="data:image/png;base64,{data}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _unique(ds: Any, name: str) -> list[str]:
    return sorted({str(v) for v in ds[name].values}) if name in ds.variables else []


def _provenance(history: History, ds: Any, rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    versions = json.loads(ds.attrs.get("versions", "{}"))
    engines = [
        ", ".join(f"{k} {v}" for k, v in json.loads(e).items()) for e in _unique(ds, "engine")
    ]
    # "": entries of metrics that measure them alone (the Inception Score)
    references = _located(ds, "reference", "reference_fingerprint")
    created = [
        t
        for r in rows
        for t in (r["created"], *(v for k, v in r.items() if k.endswith(".created") and v))
    ]
    stale = [f"{r['name']}: {metric} ({why})" for r in rows for metric, why in r["stale"].items()]
    made = _ways(rows, "features_made_by")
    if not made:  # a history written before entries recorded it: the ways it kept
        made = [
            madeby.text(f, full=True, loud=True) for f in json.loads(ds.attrs.get("features", "[]"))
        ]
    facts = [
        ("job", ", ".join(_unique(ds, "job"))),
        ("history", history.path),
        ("reference", "; ".join(references) or "none (metrics of the entries alone)"),
        ("entries", f"{len(rows)}, run from {min(created)} to {max(created)} (UTC)"),
        ("feature dimension", str(ds.attrs.get("d", "?"))),
        ("features made by", "; ".join(made) or "not recorded (feature stores of other tools)"),
    ]
    reference_made = _ways(rows, "reference_made_by")
    if reference_made:
        facts.append(("reference features made by", "; ".join(reference_made)))
    tests = _located(ds, "test", "test_fingerprint")
    if tests:
        facts.append(("held-out test set", "; ".join(tests)))
    facts += [("warning", warned) for warned in madeby.warnings_of(rows)]
    return [
        *facts,
        ("stale results", "; ".join(stale) or "none"),
        ("engine", "; ".join(engines)),
        ("updated", str(ds.attrs.get("updated", ""))),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v)),
    ]


def _located(ds: Any, column: str, digest: str) -> list[str]:
    """Each input recorded in ``column`` with its digest (none where the column is absent
    or empty)."""
    if column not in ds.variables:
        return []
    pairs = {(str(a), str(b)) for a, b in zip(ds[column].values, ds[digest].values, strict=True)}
    return [f"{loc} (digest {fp[:12]})" for loc, fp in sorted(pairs) if loc]


def _ways(rows: list[dict[str, Any]], column: str) -> list[str]:
    """Each way the rows' features (``column``: or their references') were made, for people,
    with the entries made so when there is more than one way."""
    ways: dict[str, list[str]] = {}
    for r in rows:
        if r.get(column):
            ways.setdefault(madeby.text(r[column], full=True, loud=True), []).append(r["name"])
    if len(ways) == 1:
        return list(ways)
    return [f"{way} ({madeby.listed(names)})" for way, names in ways.items()]


def write_report(history_path: str, out: str, *, overwrite: bool = False) -> tuple[str, str | None]:
    """Write ``out`` (HTML) and the Markdown summary beside it (``.md``); return both paths.
    When ``out`` is a pipe, FIFO or device (``/dev/stdout``) the page is written into it and no
    Markdown is written (beside ``/dev/stdout`` is ``/dev``): the second path is then None.

    Raises:
        HistoryError: there is no history at ``history_path``, or it is damaged.
        OutputExistsError: ``out`` or the Markdown path exists and is not a report of ours, or
            ``overwrite`` is not given.
    """
    md = None if is_stream(out) else markdown_path(out)
    if md is not None and os.path.abspath(md) == os.path.abspath(out):
        raise HistoryError(f"the report {out!r} must not end in .md: the summary goes there")
    claim_output(
        out,
        "shardeval HTML report",
        lambda p: _starts_with(p, _HTML_MARK),
        overwrite,
        streams=True,
    )
    if md is not None:
        claim_output(
            md, "shardeval Markdown report", lambda p: _starts_with(p, _MD_MARK), overwrite
        )
    history = History(history_path)
    ds = history.load()
    if ds is None:
        raise HistoryError(f"no history at {history_path!r}; `shardeval run JOB.toml` makes one")
    rows = history.table()
    declared = json.loads(ds.attrs.get("metrics", "{}"))
    units = {o["name"]: o["unit"] for spec in declared.values() for o in spec["outputs"]}
    facts = _provenance(history, ds, rows)
    headline = [
        (metric, spec["outputs"][0]["name"])
        for metric, spec in declared.items()
        if spec["outputs"][0]["name"] in ds.variables
    ]
    head = ["entry", "step", "tags", "last run (UTC)", *(_label(n, units) for _, n in headline)]
    noise = {n: within_noise(rows, n) for _, n in headline}
    cells = [
        [
            r["name"],
            str(r["step"]) if r["step"] >= 0 else "",
            r["tags"],
            r["created"],
            *(_cell(r, metric, n) + (" ≈" if i in noise[n] else "") for metric, n in headline),
        ]
        for i, r in enumerate(rows)
    ]
    if any(r.get("features_made_by") is not None for r in rows):  # recorded per entry
        head.append("features made by")
        for r, row_cells in zip(rows, cells, strict=True):
            row_cells.append(madeby.text(r.get("features_made_by")))
    sections = []
    for metric, spec in declared.items():
        scalars = [
            o["name"] for o in spec["outputs"] if not o["array"] and o["name"] in ds.variables
        ]
        table = _table(
            ["entry", "step", *(_label(n, units) for n in scalars), "computed (UTC)"],
            [
                [
                    r["name"],
                    str(r["step"]) if r["step"] >= 0 else "",
                    *(_cell(r, metric, n) for n in scalars),
                    r.get(f"{metric}.created") or "",
                ]
                for r in rows
            ],
        )
        notes = "".join(
            f"<li><code>{html.escape(o['name'])}</code>: {html.escape(o['description'])}</li>"
            for o in spec["outputs"]
        )
        plots = "".join(_plot(p, ds, rows, units) for p in spec["plots"]) if rows else ""
        sections.append(
            f'<section id="{html.escape(metric)}"><h2>{html.escape(spec["title"])}</h2>'
            f"{table}<ul>{notes}</ul>{plots}</section>"
        )
    sections.append(worst_section(ds, rows, declared))
    marked = noise_lines(rows, [n for _, n in headline])
    if marked:
        sections.insert(
            0,
            "<p>≈: within noise of the checkpoint before it (the difference is inside the two "
            "intervals' half-widths combined).</p><ul>"
            + "".join(f"<li>{html.escape(line)}</li>" for line in marked)
            + "</ul>",
        )
    facts_html = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{_HTML_MARK}<title>shardeval report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse;
margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
table.facts th,table.facts td{{text-align:left}}figure{{display:inline-block;margin:1em}}
</style></head>
<body><h1>shardeval report</h1><table class="facts">{facts_html}</table>
<h2>Entries</h2>{_table(head, cells)}
{"".join(sections)}
<script>
// Marks the page when it has loaded (every plot with it), so a headless browser can check the
// rendering: the load event is part of the page load that --dump-dom waits for, where a
// decode() promise may settle after the dump on a busy machine.
window.addEventListener("load", () => {{
  const ok = [...document.images].every(i => i.complete && i.naturalWidth > 0);
  document.body.dataset.rendered = ok ? "ok" : "broken";
}});
</script></body></html>
"""
    md_lines = [_MD_MARK, "# shardeval report", ""]
    md_lines += [f"- **{k}**: {v}" for k, v in facts]
    md_lines += ["", _md_row(head), "|" + "---|" * len(head)]
    md_lines += [_md_row(row) for row in cells]
    with atomic_file(out, "w") as fh:
        fh.write(page)
    if md is not None:
        with atomic_file(md, "w") as fh:
            fh.write("\n".join(md_lines) + "\n")
    return out, md


def _md_row(cells: list[str]) -> str:
    """A Markdown table row; a '|' inside a cell (a name, a tag) is escaped, not a column."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
