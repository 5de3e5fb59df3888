"""Reports people read: one self-contained HTML file (plots embedded as PNG data, no network)
and a Markdown summary beside it, from a run history."""

from __future__ import annotations

import base64
import html
import io
import os
from typing import Any

import numpy as np

from pipeline.atomic import atomic_file
from workflows.history import History


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _plots(history: History, rows: list[dict[str, Any]], metrics: list[str]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = history.load()
    plots = {}
    have_steps = all(r["step"] >= 0 for r in rows)
    x = [r["step"] if have_steps else i for i, r in enumerate(rows)]
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.plot(x, [r[metric] for r in rows], marker="o")
        ax.set_xlabel("step" if have_steps else "entry")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} over {'steps' if have_steps else 'entries'}")
        ax.grid(alpha=0.3)
        plots[f"{metric} over steps"] = _png(fig)
        plt.close(fig)
    if ds is not None and "spectrum" in ds and rows:
        latest = rows[-1]["name"]
        idx = int(np.flatnonzero(ds["name"].values == latest)[0])
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ref = ds["reference_spectrum"].values
        ax.semilogy(np.arange(1, ref.size + 1), np.clip(ref, 1e-300, None), label="reference")
        spec = ds["spectrum"].values[idx]
        spec = spec[np.isfinite(spec)]
        ax.semilogy(
            np.arange(1, spec.size + 1), np.clip(spec, 1e-300, None), label=f"{latest} (latest)"
        )
        ax.set_xlabel("component")
        ax.set_ylabel("covariance eigenvalue")
        ax.set_title("eigen-spectra")
        ax.legend()
        ax.grid(alpha=0.3)
        plots["eigen-spectra"] = _png(fig)
        plt.close(fig)
    return plots


def write_report(history_path: str, out: str) -> tuple[str, str]:
    """Write ``out`` (HTML) and the Markdown summary beside it (``.md``); return both paths.

    Raises:
        FileNotFoundError: there is no history at ``history_path``.
    """
    history = History(history_path)
    if history.load() is None:
        raise FileNotFoundError(f"no history at {history_path!r}")
    rows = history.table()
    metrics = [k for k in rows[0] if k not in ("name", "step", "tags")] if rows else []
    plots = _plots(history, rows, [m for m in history.headline() if m in metrics])
    head = ["entry", "step", "tags", *metrics]
    cells = [
        [
            r["name"],
            str(r["step"]) if r["step"] >= 0 else "",
            r["tags"],
            *(f"{r[m]:.6g}" for m in metrics),
        ]
        for r in rows
    ]
    table = (
        "<table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr>"
        + "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells
        )
        + "</table>"
    )
    figures = "".join(
        f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{b}">'
        f"<figcaption>{html.escape(t)}</figcaption></figure>"
        for t, b in plots.items()
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>shardeval report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}figure{{display:inline-block}}
</style></head>
<body><h1>shardeval report</h1><p>{len(rows)} entries from {html.escape(history_path)}</p>
{table}{figures}
<script>
// Marks the page once every plot has decoded, so a headless browser can check the rendering.
Promise.all([...document.images].map(i => i.decode())).then(() => {{
  const ok = [...document.images].every(i => i.naturalWidth > 0);
  document.body.dataset.rendered = ok ? "ok" : "broken";
}});
</script></body></html>
"""
    md_lines = [
        "# shardeval report",
        "",
        f"{len(rows)} entries from `{history_path}`",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    md_lines += ["| " + " | ".join(row) + " |" for row in cells]
    md = os.path.splitext(out)[0] + ".md"
    with atomic_file(out, "w") as fh:
        fh.write(page)
    with atomic_file(md, "w") as fh:
        fh.write("\n".join(md_lines) + "\n")
    return out, md
