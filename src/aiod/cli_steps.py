"""The command line's doors for the pipeline's steps: each `aiod <step>` a Nextflow task runs
(resolve-model, fetch, check-input, plan, segment, merge, finalize, score, count-results, compare)
parses nothing itself; cli.py's parser hands it the arguments, and it calls the package."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .errors import ModelError


def cmd_resolve_model(a):
    from .model_list import read_entries, resolve_entries
    if a.models:
        if a.model or a.version or a.task or a.params:
            raise ModelError("--models names every model with its version, task and parameters: use it without "
                             "--model, --model_version, --task and --model_params")
        entries = read_entries(a.models, a.models_source)
        source = f"--models {a.models_source or a.models}" if a.models.strip().lower().endswith((".yaml", ".yml", ".json")) else "--models"
    elif a.model:
        entries = [{"model": a.model, "version": a.version or None, "task": a.task or None, "label": None,
                    "params": _read_overrides(a.params, a.params_source) if a.params else {}}]
        source = a.params_source or a.params or "model_params"
    else:
        raise ModelError("no model: give --model (one) or --models (several)")
    specs = resolve_entries(entries, a.registry_dir, source=source)
    if a.out:
        if len(specs) > 1:
            raise ModelError("--out takes one model; use --out-dir for several")
        _write_spec(specs[0], Path(a.out))
    else:
        out = Path(a.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for k, spec in enumerate(specs):
            spec["index"] = k
            spec["subdir"] = spec["label"] if len(specs) > 1 else ""  # several models: <outdir>/<label>/
            _write_spec(spec, out / f"{k}.json")


def _read_overrides(path: str, source: str | None) -> dict:
    try:
        overrides = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ModelError(f"{source or path}: cannot read model parameters ({exc.__class__.__name__}: {exc})".replace("\n", " ")) from None
    if not isinstance(overrides, dict):
        raise ModelError(f"{source or path}: expected a mapping of parameter names to values, e.g. 'min_size: 50'")
    return overrides


def _write_spec(spec: dict, out: Path) -> None:
    out.write_text(json.dumps(spec, indent=2))
    out.with_suffix(".status").write_text(f"{len(spec['locations'])}\n")
    print(f"{spec['label']}: {spec['family']}/{spec['version']}/{spec['task']}, {len(spec['locations'])} artifact location(s)")


def cmd_fetch(a):
    from .artifacts import fetch
    from .cache import share_with_group
    share_with_group(a.root_dir)
    spec = json.loads(Path(a.model).read_text())
    spec["artifact"] = fetch(spec, Path(a.root_dir), attempts=a.attempts, backoff=a.backoff) if spec["locations"] else None
    Path(a.out).write_text(json.dumps(spec, indent=2))
    if spec["artifact"]:
        print(f"{spec['family']}/{spec['version']}: {spec['artifact']['path']} (sha256 {spec['artifact']['sha256']})")


def cmd_check_input(a):
    from . import samplesheet
    # Read at the user's own path (the staged copy only makes the task rerun when it changes):
    # messages name that path, and relative image paths start from its folder.
    samples = samplesheet.read_samplesheet(Path(a.source or a.samplesheet))
    if a.outdir:
        from .publish import check_targets
        from .publish import check_run_files
        rows = samplesheet.inputs_by_row(samples)
        for subdir in dict.fromkeys((a.subdirs or "").split(",")):  # '': --outdir itself (one model)
            check_targets(rows, Path(a.outdir).absolute() / subdir, Path(a.root_dir).absolute() if a.root_dir else None)
        check_run_files(Path(a.outdir).absolute(), rows)
    if a.regions:
        from .regions import read_hierarchy
        read_hierarchy(Path(a.regions))  # its columns, ids and parents, before any work
    checked = samplesheet.check_samples(samples, open_images=not a.no_open)
    samplesheet.write_checked(checked, Path(a.out))
    print(f"[aiod] {a.samplesheet}: {len(checked)} image(s) checked")


def cmd_plan(a):
    from .errors import InputError
    from .steps.plan import plan, plan_batch
    common = dict(model_json=Path(a.model), num_substacks=a.num_substacks, overlap=a.overlap,
                  substack_memory=a.substack_memory, root_dir=Path(a.root_dir), fingerprint_mode=a.fingerprint,
                  verify_cache=a.verify_cache, claim_stale_seconds=a.claim_stale_seconds,
                  claim_poll_seconds=a.claim_poll_seconds)
    if a.rows:
        rows = _tsv(a.rows, ("id", "image", "axes", "channel"))
        publish = dict(records=Path(a.records), tiff=a.tiff, outdir=Path(a.outdir) if a.outdir else None,
                       publish_mode=a.publish_mode, publish_image=a.publish_image) if a.records else None
        plan_batch(rows=rows, out_dir=Path(a.out_dir or "jobs"), batch=a.batch, name=a.name, publish=publish, **common)
    elif a.id and a.image and a.out:
        job = plan(image_path=Path(a.image), sample_id=a.id, axes=a.axes, channel=a.channel, out=Path(a.out), **common)
        Path(a.out).with_suffix(".status").write_text(f"{'hit' if job['cache_hit'] else 'miss'} {len(job['plan']['substacks'])}\n")
    else:
        raise InputError("aiod plan: give --id, --image and --out for one image, or --rows for a batch")


def _tsv(path, columns: tuple[str, ...]) -> list[dict]:
    """Rows of a tab-separated file the pipeline writes (no header; empty cells are '')."""
    lines = [line.split("\t") for line in Path(path).read_text().splitlines() if line.strip()]
    return [dict(zip(columns, cells + [""] * (len(columns) - len(cells)))) for cells in lines]


def cmd_segment(a):
    from .steps.segment import segment, segment_batch
    if a.items:
        segment_batch([(Path(r["job"]), Path(r["image"]), int(r["index"]), Path(r["out"]))
                       for r in _tsv(a.items, ("job", "image", "index", "out"))])
    else:
        segment(job_json=Path(a.plan), image_path=Path(a.image), index=a.index, out=Path(a.out))


def cmd_merge(a):
    from .steps.merge import merge_result
    merge_result(job_json=Path(a.plan), substacks=[Path(p) for p in a.substacks], out=Path(a.out))


def cmd_finalize(a):
    from .steps.finalize import finalize, finalize_batch
    common = dict(root_dir=Path(a.root_dir), tiff=a.tiff, outdir=Path(a.outdir) if a.outdir else None,
                  publish_mode=a.publish_mode, publish_image=a.publish_image)
    if a.items:
        Path(a.records).mkdir(parents=True, exist_ok=True)
        finalize_batch([(r["id"], Path(r["job"]), Path(r["result"]) if r["result"] else None)
                        for r in _tsv(a.items, ("id", "job", "result"))], workdir=Path(a.records), **common)
    else:
        finalize(job_json=Path(a.plan), result=Path(a.result) if a.result else None, sample_id=a.id, **common)


def cmd_score(a):
    """EVALUATE: each (label, id, ground truth, record) row of --items scored into <out>/<k>.json:
    the result the record names, read from its cache entry."""
    from . import evaluate
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for k, line in enumerate(Path(a.items).read_text().splitlines()):
        label, sample_id, gt, record = line.split("\t")
        entry = Path(json.loads(Path(record).read_text())["cache_entry"])
        scores = evaluate.score(Path(gt), entry / "labels.ome.zarr")
        (out / f"{k}.json").write_text(json.dumps({"label": label, "id": sample_id, **scores}))
        half = scores["matches"][0]
        print(f"{label} {sample_id}: F1@0.5 {half['f1']:.3f} ({half['tp']} matched, {half['fp']} false, {half['fn']} missed)")


def cmd_count_step(a):
    """COUNT: each (id, record, atlas, atlas_scale, voxel_size, atlas_offset) row of --items counted
    per region into <outdir>/<id>.regions.parquet/.csv, from the object table its cache entry holds
    (made here, from the mask and the image, for an entry cached before results carried one). The
    atlas is placed by atlas_offset, else by its NGFF translation and the input image's."""
    from . import measure, publish, regions, tables
    outdir = Path(a.outdir)
    for line in Path(a.items).read_text().splitlines():
        sample_id, record_path, atlas, atlas_scale, voxel_size, atlas_offset = line.split("\t")
        record = json.loads(Path(record_path).read_text())
        objects = Path(record["cache_entry"]) / "objects.parquet"
        if not objects.is_file():
            table = measure.measure_result(Path(record["cache_entry"]) / "labels.ome.zarr", record["image"])
            objects = tables.write_tables(table, Path(f"{sample_id}.objects"))[0]
        table = regions.count_regions(objects, Path(atlas), atlas_scale=atlas_scale or None, voxel_size=voxel_size or None,
                                      atlas_offset=atlas_offset or None, regions=Path(a.regions) if a.regions else None,
                                      image=record["image"])
        publish.check_region_tables(outdir, sample_id)
        parquet, csv_path = tables.write_tables(table, outdir / f"{sample_id}.regions", inputs=(atlas, record["image"]))
        c = table.columns
        print(f"{sample_id}: {table.meta['n_objects']} objects in {int((c['objects_self'][2:] > 0).sum())} region(s), "
              f"{int(c['objects'][1])} on background, {int(c['objects'][0])} outside the atlas -> {csv_path}")


def cmd_compare(a):
    from . import compare, report
    from .errors import InputError
    if a.results:
        out_dir = Path(a.results)
        comparison = compare.compare_results(out_dir, Path(a.samplesheet) if a.samplesheet else None, a.rank_by)
    else:
        if not a.outdir:
            raise InputError("aiod compare: give --results DIR (a published outdir), or --records with --outdir")
        records = [json.loads(Path(p).read_text()) for p in a.records]
        scores = {}
        for p in a.scores:
            s = json.loads(Path(p).read_text())
            scores[(s.pop("label"), s.pop("id"))] = s
        comparison = compare.compare(records, scores, a.rank_by)
        out_dir = Path(a.outdir)
    text = compare.table_text(comparison)
    written = compare.write(out_dir, comparison)
    run = json.loads(Path(a.run_info).read_text()) if a.run_info else None
    written.append(report.write_report(out_dir, samplesheet=Path(a.samplesheet) if a.samplesheet else None, run=run))
    text += f"\n  written to {out_dir}: " + ", ".join(p.name for p in written)
    if a.text:
        Path(a.text).write_text(text + "\n")
    print(text)
