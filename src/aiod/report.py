"""`aiod report`: one self-contained HTML page per run (docs/report.md).

The page holds the comparison table, each model's card and parameters, per image the thumbnail
of the image with every model's mask outlines over it, object-size histograms, time and memory
per task, and the run's versions and command. It loads nothing: figures are PNGs inside the
page as data: URIs, style and script are inline, and its Content-Security-Policy forbids any
other load. Made with jinja2 (templates/report.html.j2) and matplotlib figures drawn by its Agg
renderer (matplotlib.figure.Figure, no pyplot: a caller's backend is left as it is).

The command line imports this module for every pipeline step, so everything heavy
(jinja2, matplotlib, zarr, the readers) is imported inside the functions.
"""

from __future__ import annotations

import json
from pathlib import Path

TEMPLATE = "report.html.j2"


def write_report(results: Path, out: Path | None = None, *, samplesheet: Path | None = None,
                 run: dict | None = None, trace: Path | None = None) -> Path:
    """Write the report of the run published in `results` to `out` (default
    results/report.html) and return its path. `samplesheet`: the run's CSV (ground truth);
    `run`: facts about the run (command, nextflow_version, pipeline_version, started, duration,
    profile); `trace`: a Nextflow execution trace (time and memory per task)."""
    import jinja2

    from .report_data import human_bytes
    from .report_page import context

    results = Path(results)
    out = Path(out) if out is not None else results / "report.html"
    page = context(results, Path(samplesheet) if samplesheet else None, run, Path(trace) if trace else None)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["bytes"] = lambda n: human_bytes(n) if n else "—"
    html = env.get_template(TEMPLATE).render(**page)
    tmp = out.with_name(f".{out.name}.partial")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out


def _num(value, digits: int = 3) -> str:
    """A number for a table cell: '—' for none, integers as they are, others to `digits`."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _main(a) -> None:
    from .errors import InputError
    run = None
    if a.run_info:
        try:
            run = json.loads(Path(a.run_info).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{a.run_info}: cannot read the run facts ({exc.__class__.__name__}: {exc})") from None
        if not isinstance(run, dict):
            raise InputError(f"{a.run_info}: expected a JSON object, e.g. {{\"command\": \"nextflow run ...\"}}")
    out = write_report(Path(a.results), Path(a.out) if a.out else None, samplesheet=a.samplesheet, run=run,
                       trace=a.trace)
    print(f"[aiod] report written to {out}")
