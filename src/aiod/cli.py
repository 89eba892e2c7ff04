"""`aiod`: the command line of the package. Each subcommand parses its arguments and calls one
function; errors a person can fix print one line, `AIOD ERROR: <message>`, and exit 65."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from .errors import EXIT_CODE, AiodError, ModelError


def _resolve_model(a):
    from .models import resolve
    overrides = {}
    if a.params:
        try:
            overrides = yaml.safe_load(Path(a.params).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ModelError(f"{a.params}: cannot read model parameters ({exc.__class__.__name__}: {exc})".replace("\n", " ")) from None
        if not isinstance(overrides, dict):
            raise ModelError(f"{a.params}: expected a mapping of parameter names to values, e.g. 'min_size: 50'")
    spec = resolve(a.model, a.version, overrides, source=a.params or "model_params")
    Path(a.out).write_text(json.dumps(spec, indent=2))


def _check_input(a):
    from . import samplesheet
    # Read at the user's own path (the staged copy only makes the task rerun when it changes):
    # messages name that path, and relative image paths start from its folder.
    samples = samplesheet.read_samplesheet(Path(a.source or a.samplesheet))
    if a.outdir:
        samplesheet.check_outputs_spare_inputs(samples, Path(a.outdir))
    checked = samplesheet.check_samples(samples, open_images=not a.no_open)
    samplesheet.write_checked(checked, Path(a.out))
    print(f"[aiod] {a.samplesheet}: {len(checked)} image(s) checked")


def _plan(a):
    from . import steps
    steps.plan(image_path=Path(a.image), sample_id=a.id, axes=a.axes, channel=a.channel, model_json=Path(a.model),
               num_substacks=a.num_substacks, overlap=a.overlap, substack_memory=a.substack_memory,
               root_dir=Path(a.root_dir), fingerprint_mode=a.fingerprint, out=Path(a.out))


def _segment(a):
    from . import steps
    steps.segment(job_json=Path(a.plan), image_path=Path(a.image), index=a.index, out=Path(a.out))


def _merge(a):
    from . import steps
    steps.merge_result(job_json=Path(a.plan), substacks=[Path(p) for p in a.substacks], out=Path(a.out))


def _finalize(a):
    from . import steps
    steps.finalize(job_json=Path(a.plan), result=Path(a.result) if a.result else None, sample_id=a.id,
                   root_dir=Path(a.root_dir), tiff=a.tiff)


def _demo_data(a):
    from . import demo
    demo.write_demo(Path(a.outdir))


def _evaluate(a):
    from . import evaluate
    evaluate.report(Path(a.results), Path(a.samplesheet))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aiod", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("resolve-model", help="check a model request, write its resolved spec")
    s.add_argument("--model", required=True)
    s.add_argument("--version", required=True)
    s.add_argument("--params", help="YAML/JSON file of parameter overrides")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_resolve_model)

    s = sub.add_parser("check-input", help="validate a samplesheet and every image it names")
    s.add_argument("--samplesheet", required=True)
    s.add_argument("--source", help="the samplesheet's original path, named in messages (relative image paths start from its folder)")
    s.add_argument("--no-open", action="store_true", help="check the CSV only, do not open images")
    s.add_argument("--outdir", help="where results will be published: refuse ids whose results would replace an input")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_check_input)

    s = sub.add_parser("plan", help="identify an image, look it up in the cache, plan its substacks")
    s.add_argument("--id", required=True)
    s.add_argument("--image", required=True)
    s.add_argument("--axes")
    s.add_argument("--channel", type=int)
    s.add_argument("--model", required=True, help="model.json from resolve-model")
    s.add_argument("--num-substacks", default="auto")
    s.add_argument("--overlap", default="32")
    s.add_argument("--substack-memory", default="2 GB")
    s.add_argument("--root-dir", required=True)
    s.add_argument("--fingerprint", choices=("sample", "full"), default="sample")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_plan)

    s = sub.add_parser("segment", help="segment one substack")
    s.add_argument("--plan", required=True)
    s.add_argument("--image", required=True)
    s.add_argument("--index", type=int, required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=_segment)

    s = sub.add_parser("merge", help="merge substack labels into one OME-Zarr mask (docs/merge.md)")
    s.add_argument("--plan", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("substacks", nargs="+")
    s.set_defaults(func=_merge)

    s = sub.add_parser("finalize", help="move a result into the cache, or fetch it from there, for publishing")
    s.add_argument("--plan", required=True)
    s.add_argument("--result")
    s.add_argument("--id", required=True)
    s.add_argument("--root-dir", required=True)
    s.add_argument("--tiff", action="store_true")
    s.set_defaults(func=_finalize)

    s = sub.add_parser("demo-data", help="write the built-in demo images, ground truth and samplesheet")
    s.add_argument("outdir")
    s.set_defaults(func=_demo_data)

    s = sub.add_parser("evaluate", help="score published masks against the samplesheet's ground truth")
    s.add_argument("--results", required=True)
    s.add_argument("--samplesheet", required=True)
    s.set_defaults(func=_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except AiodError as exc:
        print(f"AIOD ERROR: {exc}", file=sys.stderr, flush=True)
        return EXIT_CODE
    return 0
