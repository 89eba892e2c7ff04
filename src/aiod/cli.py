"""`aiod`: the command line of the package. Each subcommand parses its arguments and calls one
function (the pipeline's steps: cli_steps.py); errors a person can fix print one line,
`AIOD ERROR: <message>`, and exit 65 (a full disk or quota too: diskspace.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import cli_steps as steps
from . import diskspace
from .errors import EXIT_CODE, AiodError


def _sources(a):
    from . import sources
    if a.write:
        sources.MAP_FILE.write_text(sources.map_text())
        print(f"wrote {sources.MAP_FILE}")
    else:
        print(sources.map_text(), end="")


def _models(a):
    from . import catalogue, registry
    if a.action == "validate":
        problems = registry.validate(a.names or [registry.BUILTIN_DIR, *a.registry_dir])
        for line in problems:
            print(f"AIOD ERROR: {line}", file=sys.stderr)
        if problems:
            return EXIT_CODE
        print("manifests are valid")
    elif a.action in ("schema", "docs"):
        text, target = ((registry.json_schema(), registry.BUILTIN_DIR / "manifest.schema.json") if a.action == "schema"
                        else (catalogue.reference(registry.load_registry()), registry.BUILTIN_DIR.parent / "docs" / "models.md"))
        if a.write:
            target.write_text(text)
            print(f"wrote {target}")
        else:
            print(text, end="")
    else:
        families = registry.load_registry(a.registry_dir)
        if a.action == "list":
            print(catalogue.listing(families, a.all))
        else:
            for name in a.names or families:
                family, _, version = name.partition("/")
                manifest = families.get(family)
                if manifest is None or (version and version not in manifest.versions):
                    from .models import resolve
                    resolve(family, version or None, None, {}, a.registry_dir)  # raises the specific error
                print(catalogue.show(manifest, version or None))


def _cache(a):
    from . import cache_tools
    root = Path(a.root_dir).expanduser()
    if a.action == "info":
        print(cache_tools.info(root, a.key))
        return 0
    if a.action == "verify":
        lines, whole = cache_tools.verify(root, a.keys, a.all)
        print("\n".join(lines))
        return 0 if whole else 1
    filters = cache_tools.Filters(a.family, a.version, a.image, a.older_than)
    if a.action == "ls":
        print(cache_tools.listing(root, filters))
    else:
        print("\n".join(cache_tools.clear(root, filters, a.yes, damaged=a.damaged)))
    return 0


def _demo_data(a):
    from . import demo
    demo.write_demo(Path(a.outdir))


def _evaluate(a):
    from . import evaluate
    evaluate.report(Path(a.results), Path(a.samplesheet))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aiod", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("resolve-model", help="check a model request against the registry, write its resolved spec")
    s.add_argument("--model", help="one model (family)")
    s.add_argument("--models", help="several: 'family[:version[:task]][:{params}], ...' or a YAML/JSON list (aiod.model_list)")
    s.add_argument("--models-source", help="the --models file's original path, named in messages")
    s.add_argument("--version", help="default: the family's first version")
    s.add_argument("--task", help="default: the version's first task")
    s.add_argument("--params", help="YAML/JSON file of parameter overrides")
    s.add_argument("--params-source", help="the overrides file's original path, named in messages")
    s.add_argument("--registry-dir", action="append", default=[], help="extra registry directory (repeatable)")
    out = s.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", help="the resolved spec of the one model")
    out.add_argument("--out-dir", help="a folder: <k>.json for the k-th model (from 0)")
    s.set_defaults(func=steps.cmd_resolve_model)

    s = sub.add_parser("fetch", help="fetch a resolved model's artifact into the cache (once), write the spec with it")
    s.add_argument("--model", required=True, help="model.json from resolve-model")
    s.add_argument("--root-dir", required=True)
    s.add_argument("--attempts", type=int, default=5, help="tries per URL (network errors, HTTP 408/429/5xx)")
    s.add_argument("--backoff", type=float, default=2.0, help="seconds before the first retry, doubled each time")
    s.add_argument("--out", required=True)
    s.set_defaults(func=steps.cmd_fetch)

    s = sub.add_parser("sources", help="which Python files each pipeline step runs (src/aiod/step_sources.json)")
    s.add_argument("--write", action="store_true", help="write the committed map instead of printing it")
    s.set_defaults(func=_sources)

    s = sub.add_parser("models", help="list, show or validate the registry's models (docs/models.md)")
    s.add_argument("action", choices=("list", "show", "validate", "schema", "docs"))
    s.add_argument("names", nargs="*", help="show: family or family/version; validate: manifest files or registry directories")
    s.add_argument("--registry-dir", action="append", default=[], help="extra registry directory (repeatable)")
    s.add_argument("--all", action="store_true", help="list: also versions you cannot run (unreadable locations)")
    s.add_argument("--write", action="store_true", help="schema/docs: write the committed file instead of printing")
    s.set_defaults(func=_models)

    s = sub.add_parser("check-input", help="validate a samplesheet and every image it names")
    s.add_argument("--samplesheet", required=True)
    s.add_argument("--source", help="the samplesheet's original path, named in messages (relative image paths start from its folder)")
    s.add_argument("--no-open", action="store_true", help="check the CSV only, do not open images")
    s.add_argument("--outdir", help="where results will be published: refuse results that would touch an input or a file AIoD did not write")
    s.add_argument("--regions", help="the regions' hierarchy (--regions): checked before any work")
    s.add_argument("--subdirs", default="", help="comma-separated folders under --outdir that models publish in ('': --outdir)")
    s.add_argument("--root-dir", help="the cache's root: refused inside an input")
    s.add_argument("--out", required=True)
    s.set_defaults(func=steps.cmd_check_input)

    s = sub.add_parser("plan", help="identify images, look them up in the cache, plan their substacks")
    s.add_argument("--id", help="one image: its id (with --image and --out)")
    s.add_argument("--image")
    s.add_argument("--rows", help="a batch of images: a TSV of id, image, axes, channel (no header)")
    s.add_argument("--out-dir", help="with --rows: where each image's job file goes (<id>.json); batches.json beside it")
    s.add_argument("--batch", default="auto", help="substacks per SEGMENT task: auto, a count (8) or voxels (64M)")
    s.add_argument("--name", default="", help="with --rows: the prefix of the SEGMENT batches' names")
    s.add_argument("--axes")
    s.add_argument("--channel", type=int)
    s.add_argument("--model", required=True, help="model.json from resolve-model")
    s.add_argument("--num-substacks", default="auto")
    s.add_argument("--overlap", default="32")
    s.add_argument("--substack-memory", default="2 GB")
    s.add_argument("--root-dir", required=True)
    s.add_argument("--fingerprint", default="full",
                   help="full: every byte, memoised under root_dir (default); sample: a bounded sample, for archives never edited")
    s.add_argument("--verify-cache", action="store_true", help="check every checksum of a cached result before using it")
    s.add_argument("--claim-stale-seconds", type=float, default=600.0,
                   help="a run that claimed the key and gave no sign of life for this long is taken over")
    s.add_argument("--claim-poll-seconds", type=float, default=5.0, help="how often to look while waiting for another run")
    s.add_argument("--out")
    s.add_argument("--records", help="with --rows: publish the cache hits as `finalize` does, their records here (<id>.json)")
    s.add_argument("--tiff", action="store_true", help="with --records: as finalize --tiff")
    s.add_argument("--outdir", help="with --records: as finalize --outdir")
    s.add_argument("--publish-mode", default="copy", help="with --records: as finalize --publish-mode")
    s.add_argument("--publish-image", action="store_true", help="with --records: as finalize --publish-image")
    s.set_defaults(func=steps.cmd_plan)

    s = sub.add_parser("segment", help="segment one substack, or a batch of them with the model loaded once")
    s.add_argument("--items", help="a batch: a TSV of job file, image, substack index, out (no header)")
    s.add_argument("--plan")
    s.add_argument("--image")
    s.add_argument("--index", type=int)
    s.add_argument("--out")
    s.set_defaults(func=steps.cmd_segment)

    s = sub.add_parser("merge", help="merge substack labels into one OME-Zarr mask (docs/merge.md)")
    s.add_argument("--plan", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("substacks", nargs="+")
    s.set_defaults(func=steps.cmd_merge)

    s = sub.add_parser("finalize", help="move results into the cache, or fetch them from there, and publish them")
    s.add_argument("--items", help="a batch: a TSV of id, job file, result folder or empty for a cache hit (no header)")
    s.add_argument("--records", default="records", help="with --items: where each image's record goes (<id>.json)")
    s.add_argument("--plan")
    s.add_argument("--result")
    s.add_argument("--id")
    s.add_argument("--root-dir", required=True)
    s.add_argument("--tiff", action="store_true")
    s.add_argument("--outdir", help="publish the result here (docs/output.md); without it, only the task folder gets it")
    s.add_argument("--publish-mode", default="copy", help="copy, copyNoFollow, symlink or link")
    s.add_argument("--publish-image", action="store_true",
                   help="write the input image into the published result: one NGFF image with its labels (docs/output.md)")
    s.set_defaults(func=steps.cmd_finalize)

    s = sub.add_parser("cache", help="list, inspect, verify or clear the shared cache under a root_dir (docs/cache.md)")
    actions = s.add_subparsers(dest="action", required=True)
    for name, help_text in (("ls", "list results (size, age) and the size of each kind of thing under root_dir"),
                            ("info", "what one result is: image, model, parameters, plan, timings, files"),
                            ("verify", "check every checksum; damaged entries are moved aside and listed"),
                            ("clear", "delete results by filter (a dry run unless --yes)")):
        a = actions.add_parser(name, help=help_text)
        a.add_argument("--root-dir", default="~/.nextflow/aiod")
        if name in ("ls", "clear"):
            a.add_argument("--family", help="only this model family")
            a.add_argument("--version", help="only this model version")
            a.add_argument("--image", help="only results of this image (samplesheet id or file name)")
            a.add_argument("--older-than", help="only results older than this (e.g. 90s, 12h, 30d, 2w)")
        if name == "info":
            a.add_argument("key", help="a key, or a prefix of one that no other key has")
        if name == "verify":
            a.add_argument("keys", nargs="*", help="keys or unique prefixes to check")
            a.add_argument("--all", action="store_true", help="check every entry")
        if name == "clear":
            a.add_argument("--damaged", action="store_true", help="delete the copies under .damaged/ instead of results")
            a.add_argument("--yes", action="store_true", help="delete (without it, only list what would go)")
        a.set_defaults(func=_cache)

    s = sub.add_parser("measure", help="per-object table of a mask: size, centroid, bounding box, intensity (docs/measure.md)")
    s.add_argument("--mask", required=True, help="an OME-Zarr result (<id>.ome.zarr), or a label TIFF or zarr array")
    s.add_argument("--image", help="the image: adds mean/min/max intensity per channel")
    s.add_argument("--image-axes", help="the image's stored axes when its metadata lacks them (e.g. CZYX)")
    s.add_argument("--label", help="which label image of the OME-Zarr (default: the first listed)")
    s.add_argument("--out", required=True, help="writes OUT.parquet and OUT.csv")
    s.set_defaults(func=_lazy("measure", "_cli"))

    s = sub.add_parser("count", help="count objects per atlas region: counts, volumes, densities (docs/measure.md)")
    s.add_argument("--objects", required=True, help="the object table of `aiod measure` (.parquet)")
    s.add_argument("--atlas", required=True, help="a label image of region ids (TIFF or (OME-)Zarr)")
    s.add_argument("--atlas-scale", help="the atlas' voxel size z,y,x (µm) when its file has none")
    s.add_argument("--voxel-size", help="the mask's voxel size z,y,x (µm), instead of its file's")
    s.add_argument("--atlas-offset", help="where the atlas' first corner lies from the image's (µm, z,y,x); default: "
                   "the atlas' NGFF translation minus the mask's (or image's), else 0")
    s.add_argument("--regions", help="region hierarchy CSV: id, name, acronym, parent_id")
    s.add_argument("--partial-atlas", action="store_true",
                   help="accept an atlas that does not cover the image (objects beyond it: 'outside atlas')")
    s.add_argument("--out", required=True, help="writes OUT.parquet and OUT.csv")
    s.set_defaults(func=_lazy("regions", "_cli"))

    s = sub.add_parser("finetune", help="train a registered model on annotated images, register the result (docs/finetune.md)")
    s.add_argument("--input", required=True, help="samplesheet with ground_truth for every image (and optionally split)")
    s.add_argument("--model", required=True, help="the family, e.g. cellpose")
    s.add_argument("--version", help="the version to start from (default: the family's first)")
    s.add_argument("--name", required=True, help="the new version's name")
    s.add_argument("--registry-dir", required=True, help="the lab registry directory the new version is written to")
    s.add_argument("--out", help="folder for finetune.json and finetune.html (required unless --check-only)")
    s.add_argument("--params", help="training parameters: a YAML file or mapping, e.g. '{epochs: 50, patch_size: 128}'")
    s.add_argument("--register", default="better", choices=["better", "always"],
                   help="better: only a model that scores better on the test images; always: whatever it scores")
    s.add_argument("--root-dir", default=str(Path("~/.nextflow/aiod").expanduser()),
                   help="the pipeline's root_dir: the parent's weights are fetched into its cache")
    s.add_argument("--checkpoints", help="folder for the training checkpoints (default: <root-dir>/aiod_cache/<family>/training)")
    s.add_argument("--spec", help="a fetched model spec (the pipeline's FETCH_ARTIFACTS output) instead of resolving and fetching")
    s.add_argument("--check-only", action="store_true", help="check the request and the samplesheet, train nothing, write nothing")
    s.set_defaults(func=_lazy("finetune", "_cli"))

    # `aiod env ...` goes to aiod.environments before this parser (main); listed here for --help
    sub.add_parser("env", help="build and find the model families' environments: build|path|bin-path|list (docs/environments.md)")

    s = sub.add_parser("demo-data", help="write the built-in demo images, ground truth and samplesheet")
    s.add_argument("outdir")
    s.set_defaults(func=_demo_data)

    s = sub.add_parser("score", help="score masks against their ground truth, one JSON per image (the pipeline's EVALUATE)")
    s.add_argument("--items", required=True, help="TSV: model label, id, ground truth, the result's record")
    s.add_argument("--out", required=True, help="folder: <k>.json for row k")
    s.set_defaults(func=steps.cmd_score)

    s = sub.add_parser("count-results", help="count each result's objects per atlas region (the pipeline's COUNT)")
    s.add_argument("--items", required=True, help="TSV: id, the result's record, atlas, atlas_scale, voxel_size, atlas_offset")
    s.add_argument("--outdir", required=True, help="where <id>.regions.parquet/.csv go")
    s.add_argument("--regions", help="the regions' hierarchy (CSV: id, name, acronym, parent_id)")
    s.set_defaults(func=steps.cmd_count_step)

    s = sub.add_parser("compare", help="one table of a run's models (docs/compare.md), its scores and the HTML report")
    s.add_argument("--results", help="a published outdir: compare every result published there, and write into it")
    s.add_argument("--samplesheet", help="the run's samplesheet: images with ground_truth are scored")
    s.add_argument("--rank-by", default="f1", help="f1 (at IoU 0.5), ap_50_95, panoptic_quality or dice")
    s.add_argument("--records", nargs="*", default=[], help="(pipeline) the run's records")
    s.add_argument("--scores", nargs="*", default=[], help="(pipeline) EVALUATE's scores")
    s.add_argument("--outdir", help="(pipeline) where the tables and the report go")
    s.add_argument("--run-info", help="JSON: the command, Nextflow and pipeline versions, for the report")
    s.add_argument("--text", help="also write the table printed to this file")
    s.set_defaults(func=steps.cmd_compare)

    s = sub.add_parser("evaluate", help="score published masks against the samplesheet's ground truth")
    s.add_argument("--results", required=True)
    s.add_argument("--samplesheet", required=True)
    s.set_defaults(func=_evaluate)

    s = sub.add_parser("report", help="write one self-contained HTML page about a run's results (docs/report.md)")
    s.add_argument("--results", required=True, help="the run's --outdir")
    s.add_argument("--samplesheet", help="the run's samplesheet (ground truth: matched, missed and false objects)")
    s.add_argument("--out", help="the page to write (default: <results>/report.html)")
    s.add_argument("--trace", help="a Nextflow execution trace (pipeline_info/execution_trace_*.txt)")
    s.add_argument("--run-info", help="a JSON file of facts about the run: command, nextflow_version, "
                                      "pipeline_version, started, duration, profile")
    s.set_defaults(func=_lazy("report", "_main"))
    return p


def _lazy(module: str, name: str):
    """The handler `name` of aiod.<module>, imported only when its subcommand runs: a module the
    command line imported for every subcommand would be in every pipeline step's sources
    (aiod.sources), and editing it would rerun every task on -resume."""
    def run(a):
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{module}"), name)(a)

    return run


def _written_path(a) -> Path | None:
    """Where a step writes (for a disk-full message when the error names no file)."""
    for name in ("out", "root_dir", "outdir", "results"):
        if getattr(a, name, None):
            return Path(getattr(a, name))
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["env"]:  # bin/aiod-env's tool, with its own arguments
        from . import environments
        return environments.main(argv[1:], prog="aiod env")
    args = parser().parse_args(argv)
    diskspace.reset()
    try:
        return args.func(args) or 0
    except AiodError as exc:
        print(f"AIOD ERROR: {exc}", file=sys.stderr, flush=True)
        return EXIT_CODE
    except Exception as exc:
        full = diskspace.full_error(exc)
        if full is None:
            raise
        print(f"AIOD ERROR: {diskspace.message(full, _written_path(args))}", file=sys.stderr, flush=True)
        return EXIT_CODE
