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

from shardeval.pipeline.images.provenance import recorded
from shardeval.pipeline.io.atomic import atomic_file, claim_output, is_stream
from shardeval.workflows.history import History, HistoryError

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


def _table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{cells}</tr>{body}</table>"


def _plot(spec: dict[str, Any], ds: Any, rows: list[dict[str, Any]], units: dict[str, str]) -> str:
    """One declared plot as an HTML figure ("" when none of its values are in the history)."""
    if not any(name in ds.variables for name in spec["values"]):
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    unit = next((units[v] for v in spec["values"] if units.get(v)), "")
    ax.set_ylabel(f"{spec['ylabel']} [{unit}]" if unit else spec["ylabel"])
    if spec["kind"] == "steps":
        have_steps = all(r["step"] >= 0 for r in rows)
        x = [r["step"] if have_steps else i for i, r in enumerate(rows)]
        for name in spec["values"]:
            if name in ds.variables:
                ys = [np.nan if r.get(name) is None else r[name] for r in rows]
                ax.plot(x, ys, marker="o", label=name)
        ax.set_xlabel("training step" if have_steps else "entry (no steps recorded)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:  # curve: the latest entry's arrays against their index
        latest = rows[-1]["name"]
        idx = int(np.flatnonzero(ds["name"].values.astype(str) == latest)[0])
        for name in spec["values"]:
            if name not in ds.variables:
                continue
            y = np.asarray(ds[name].values[idx], dtype=np.float64)
            y = y[np.isfinite(y)]
            if spec.get("log"):
                y = np.clip(y, np.finfo(np.float64).tiny, None)
            ax.plot(np.arange(1, y.size + 1), y, label=f"{name} ({latest})")
        ax.set_xlabel("index (largest first)")
    if spec.get("log"):
        ax.set_yscale("log")
    if len(ax.get_lines()) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    data = _png(fig)
    plt.close(fig)
    title = html.escape(spec["title"])
    return (
        f'<figure><img alt="{title}" src="data:image/png;base64,{data}">'
        f"<figcaption>{title}</figcaption></figure>"
    )


def _unique(ds: Any, name: str) -> list[str]:
    return sorted({str(v) for v in ds[name].values}) if name in ds.variables else []


def _provenance(history: History, ds: Any, rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    versions = json.loads(ds.attrs.get("versions", "{}"))
    engines = [
        ", ".join(f"{k} {v}" for k, v in json.loads(e).items()) for e in _unique(ds, "engine")
    ]
    references = [
        f"{loc} (digest {fp[:12]})"
        for loc, fp in sorted(
            {
                (str(a), str(b))
                for a, b in zip(
                    ds["reference"].values, ds["reference_fingerprint"].values, strict=True
                )
            }
        )
        if loc  # "": entries of metrics that measure them alone (the Inception Score)
    ]
    created = [r["created"] for r in rows]
    # The weights' whole digest, and whether they are the published file (decided now, from
    # the digest against the pinned one).
    made = [
        recorded(f).text(full=True, loud=True) for f in json.loads(ds.attrs.get("features", "[]"))
    ]
    return [
        ("job", ", ".join(_unique(ds, "job"))),
        ("history", history.path),
        ("reference", "; ".join(references) or "none (metrics of the entries alone)"),
        ("entries", f"{len(rows)}, run from {min(created)} to {max(created)} (UTC)"),
        ("feature dimension", str(ds.attrs.get("d", "?"))),
        ("features made by", "; ".join(made) or "not recorded (feature stores of other tools)"),
        ("engine", "; ".join(engines)),
        ("updated", str(ds.attrs.get("updated", ""))),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v)),
    ]


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
        spec["outputs"][0]["name"]
        for spec in declared.values()
        if spec["outputs"][0]["name"] in ds.variables
    ]
    head = ["entry", "step", "tags", "ran at (UTC)", *(_label(m, units) for m in headline)]
    cells = [
        [
            r["name"],
            str(r["step"]) if r["step"] >= 0 else "",
            r["tags"],
            r["created"],
            *(_fmt(r.get(m)) for m in headline),
        ]
        for r in rows
    ]
    sections = []
    for metric, spec in declared.items():
        scalars = [
            o["name"] for o in spec["outputs"] if not o["array"] and o["name"] in ds.variables
        ]
        table = _table(
            ["entry", "step", *(_label(n, units) for n in scalars)],
            [
                [
                    r["name"],
                    str(r["step"]) if r["step"] >= 0 else "",
                    *(_fmt(r.get(n)) for n in scalars),
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
