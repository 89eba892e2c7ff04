"""Fine-tune a registered model on annotated images and register the result (`aiod finetune`,
the pipeline's FINETUNE entry; docs/finetune.md).

    finetune(FinetuneRequest) -> the record written to <out>/finetune.json

In order, each step before any work that the next needs:
1. check: the family can be trained (its manifest declares `training` parameters and
   aiod.training has its trainer), the parent version exists and the new name does not, every
   training parameter against its declaration, every samplesheet row has ground truth that fits
   its image, the split (the samplesheet's `split` column, or one made from the image ids) has
   training and test images;
2. train from the parent's weights (aiod.training.<adapter>), checkpoint after every epoch in a
   folder named by what the training depends on, so a rerun resumes;
3. score the parent and the new model on the test images (aiod.finetune_eval: the adapter
   through the pipeline's planner, merge and metrics);
4. register (aiod.finetune_registry) only when the new model scores better (F1 at IoU 0.5,
   pooled), or always with register="always"; a model that is not better is reported
   (record["registered"] is False, the scores in finetune.json and finetune.html), not registered.
Nothing is written to the registry directory before step 4, and step 4 leaves either the whole
new version or nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import types
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import finetune_eval, finetune_registry, registry, samplesheet
from .errors import InputError, ModelError
from .fingerprint import fingerprint

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
REGISTER = ("better", "always")


@dataclass(frozen=True)
class Item:
    """One annotated image, as the trainers and the evaluation read it."""

    id: str
    image: Path
    ground_truth: Path
    axes: str | None
    channel: int | None


@dataclass
class FinetuneRequest:
    samplesheet: Path
    model: str
    version: str | None
    name: str
    registry_dir: Path
    out: Path
    params: dict = field(default_factory=dict)
    register: str = "better"
    root_dir: Path = Path("~/.nextflow/aiod").expanduser()
    checkpoints: Path | None = None   # default: <root_dir>/aiod_cache/<family>/training
    spec: Path | None = None          # a fetched model spec (the pipeline's FETCH_ARTIFACTS); None: resolve and fetch


def read_params(text: str | None, source: str = "--params") -> dict:
    """Training parameters from a YAML file or an inline YAML mapping ('epochs: 5' or '{epochs: 5, batch_size: 4}')."""
    if not text:
        return {}
    path = Path(text)
    try:
        data = yaml.safe_load(path.read_text() if path.is_file() else text)
    except (OSError, yaml.YAMLError) as exc:
        raise ModelError(f"{source}: cannot read training parameters ({exc})".replace("\n", " ")) from None
    if isinstance(data, str) and ":" in data:  # 'epochs:5' without the space YAML needs
        data = yaml.safe_load(data.replace(":", ": "))
    if not isinstance(data, dict):
        raise ModelError(f"{source}: expected a mapping of training parameters, e.g. 'epochs: 50'")
    return data


def check_params(manifest: registry.Manifest, given: dict, trainer) -> dict:
    """Every training parameter, typed: the declared default unless given."""
    declared = manifest.training
    params = {name: p.default for name, p in declared.items()}
    for key, value in given.items():
        if key not in declared:
            raise ModelError(f"training parameter '{key}' is not one of {manifest.family}'s"
                             f"{registry.did_you_mean(key, declared)}; parameters: {', '.join(declared)}")
        try:
            params[key] = declared[key].check(value)
        except ValueError as exc:
            raise ModelError(f"training parameter '{key}' of {manifest.family}: {exc}") from None
    try:
        trainer.check(params)
    except ValueError as exc:
        raise ModelError(f"training parameters of {manifest.family}: {exc}") from None
    return params


def split_of(samples: list[samplesheet.Sample], sheet: Path) -> tuple[dict[str, list[str]], str]:
    """split -> ids, and where it came from. Without a `split` column: the ids ordered by the
    sha256 of the id; the first fifth (at least one) is test, the next tenth valid (with ten
    images or more), the rest train. The same ids always give the same split."""
    given = [s.split for s in samples]
    if any(given):
        missing = next((s for s in samples if not s.split), None)
        if missing is not None:
            raise InputError(f"{sheet}: line {missing.line}: column 'split': is empty; give every image a split "
                             f"({', '.join(samplesheet.SPLITS)}) or none")
        split = {name: [s.id for s in samples if s.split == name] for name in samplesheet.SPLITS}
        origin = "samplesheet"
    else:
        ids = sorted((s.id for s in samples), key=lambda i: hashlib.sha256(i.encode()).hexdigest())
        n_test = max(1, round(len(ids) / 5))
        n_valid = round(len(ids) / 10) if len(ids) >= 10 else 0
        split = {"train": sorted(ids[n_test + n_valid:]), "valid": sorted(ids[n_test:n_test + n_valid]),
                 "test": sorted(ids[:n_test])}
        origin = "image id"
    for needed in ("train", "test"):
        if not split[needed]:
            raise InputError(f"{sheet}: no image in the '{needed}' split; fine-tuning needs images to train on and "
                             "images to test on" + ("" if origin == "samplesheet" else " (give two images or more)"))
    return split, origin


def read_items(sheet: Path, ndims=None) -> tuple[dict[str, Item], dict[str, list[str]], str]:
    """The samplesheet's images (each with ground truth that fits it: samplesheet.check_samples)
    and their split; `ndims`: the spatial dimensions the trainer takes."""
    samples = samplesheet.read_samplesheet(sheet)
    for s in samples:
        if s.ground_truth is None:
            raise InputError(f"{sheet}: line {s.line}: column 'ground_truth': image '{s.id}' has no ground truth; "
                             "fine-tuning needs an annotation (a label image) for every image")
    checked = samplesheet.check_samples(samples)
    for c in checked:
        if ndims and len(c.spatial_shape) not in ndims:
            raise InputError(f"{sheet}: line {c.sample.line}: column 'image': {c.image} is {len(c.spatial_shape)}D; "
                             f"this family is fine-tuned on {' or '.join(f'{n}D' for n in ndims)} images")
    split, origin = split_of(samples, sheet)
    items = {c.sample.id: Item(c.sample.id, c.image, c.ground_truth, c.sample.axes, c.sample.channel) for c in checked}
    return items, split, origin


def data_fingerprint(items: dict[str, Item], split: dict[str, list[str]]) -> str:
    """sha256 over every image's and ground truth's content fingerprint, with its id and split."""
    digest = hashlib.sha256()
    for part, ids in sorted(split.items()):
        for i in sorted(ids):
            digest.update(f"{part}\0{i}\0{fingerprint(items[i].image)}\0{fingerprint(items[i].ground_truth)}\n".encode())
    return digest.hexdigest()


def _model_spec(req: FinetuneRequest, version: str) -> dict:
    if req.spec is not None:
        return json.loads(Path(req.spec).read_text())
    from .artifacts import fetch
    from .models import resolve

    spec = resolve(req.model, version, None, {}, _registry_dirs(req))
    spec["artifact"] = fetch(spec, Path(req.root_dir)) if spec["locations"] else None
    return spec


def _registry_dirs(req: FinetuneRequest) -> list[Path]:
    return [Path(req.registry_dir)] if Path(req.registry_dir).is_dir() else []


def checked_request(req: FinetuneRequest):
    """Everything checked, nothing written: (manifest, version, trainer, params, items, split, origin)."""
    from .training import trainer as find_trainer

    if req.register not in REGISTER:
        raise ModelError(f"--register '{req.register}': expected one of {', '.join(REGISTER)}")
    if not NAME_PATTERN.fullmatch(req.name):
        raise ModelError(f"name '{req.name}': may only contain letters, digits, '.', '_' and '-', starting with a letter or digit")
    families = registry.load_registry(_registry_dirs(req))
    if req.model not in families:
        raise ModelError(f"unknown model '{req.model}'{registry.did_you_mean(req.model, families)}; models: {', '.join(families)}")
    manifest = families[req.model]
    trainer = find_trainer(manifest.adapter or manifest.family)
    trainable = [f for f, m in families.items() if m.training and find_trainer(m.adapter or f)]
    if not manifest.training or trainer is None:
        raise ModelError(f"model '{req.model}' cannot be fine-tuned here (no training support: its manifest declares no "
                         f"training parameters or aiod.training has no trainer for it); models that can: {', '.join(trainable)}")
    version = req.version or next(iter(manifest.versions))
    if version not in manifest.versions:
        raise ModelError(f"unknown version '{version}' of model '{req.model}'{registry.did_you_mean(version, manifest.versions)}; "
                         f"versions: {', '.join(manifest.versions)}")
    if req.name in manifest.versions:
        raise ModelError(f"{req.model}/{req.name} already exists in the registry; choose another --name")
    params = check_params(manifest, req.params, trainer)
    items, split, origin = read_items(Path(req.samplesheet), getattr(trainer, "NDIMS", None))
    return manifest, version, trainer, params, items, split, origin


def finetune(req: FinetuneRequest) -> dict:
    manifest, version, trainer, params, items, split, origin = checked_request(req)
    spec = _model_spec(req, version)
    artifact = spec["artifact"]
    data = data_fingerprint(items, split)
    key = hashlib.sha256(json.dumps([artifact and artifact["sha256"], data, params], sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(req.checkpoints or Path(req.root_dir) / "aiod_cache" / spec["family"] / "training") / f"{req.name}-{key}"
    seg_params = types.SimpleNamespace(**spec["params"])
    config = artifact.get("config", {}) if artifact else {}
    weights_in = Path(artifact["path"]) if artifact else None
    trained = trainer.train(weights_in, config, seg_params, [items[i] for i in split["train"]],
                            [items[i] for i in split["valid"]], params, folder)
    out = Path(req.out)
    test = [items[i] for i in split["test"]]
    before = finetune_eval.score_model(spec["adapter"], weights_in, config, seg_params, test, out / "eval" / "before")
    after = finetune_eval.score_model(spec["adapter"], trained["weights"], {}, seg_params, test, out / "eval" / "after")
    better = after["pooled"]["f1"] > before["pooled"]["f1"]
    record = {"format": "aiod-finetune/1", "family": spec["family"], "parent": version, "name": req.name,
              "parent_sha256": artifact and artifact["sha256"], "data": data, "split": split, "split_from": origin,
              "params": params, "epochs_done": trained["epochs_done"], "seconds": round(trained["seconds"], 1),
              "curves": trained["curves"], "checkpoint": str(folder),
              "metrics": {"before": before, "after": after}, "better": better, "registered": False}
    if better or req.register == "always":
        record["weights_sha256"] = finetune_registry.register(Path(req.registry_dir), manifest, version, spec, record,
                                                              trained["weights"])
        record["registered"] = True
    finetune_eval.write_outputs(out, record)
    return record


def _cli(a) -> None:
    """`aiod finetune` (aiod.cli parses its arguments)."""
    if not (a.out or a.check_only):
        raise ModelError("aiod finetune: --out is required (the folder for finetune.json and finetune.html)")
    req = FinetuneRequest(
        samplesheet=Path(a.input), model=a.model, version=a.version, name=a.name, registry_dir=Path(a.registry_dir),
        out=Path(a.out or "."), params=read_params(a.params), register=a.register, root_dir=Path(a.root_dir),
        checkpoints=Path(a.checkpoints) if a.checkpoints else None, spec=Path(a.spec) if a.spec else None)
    if a.check_only:
        manifest, version, _, params, _, split, origin = checked_request(req)
        print(f"{a.model}/{a.name}: from {version}, " + ", ".join(f"{len(v)} {k}" for k, v in split.items())
              + f" image(s) (split from the {origin}); " + ", ".join(f"{k}={v}" for k, v in params.items()))
        return
    record = finetune(req)
    before, after = (record["metrics"][k]["pooled"]["f1"] for k in ("before", "after"))
    where = f"registered in {a.registry_dir}" if record["registered"] else (
        f"NOT registered: not better than {record['parent']} (--register always registers it anyway)")
    print(f"{record['family']}/{record['name']}: {where}; F1@0.5 on the test images {before:.3f} -> {after:.3f} "
          f"after {record['epochs_done']} epochs; {Path(req.out) / 'finetune.html'}")
