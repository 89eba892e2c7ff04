"""Texts about the registry for people: `aiod models list|show` and the generated parameter
reference docs/models.md (a test fails when it is stale; `bin/aiod models docs --write` redoes it)."""

from __future__ import annotations

from .models import visible
from .registry import TASKS, Manifest

GENERATED = "<!-- Generated from model_registry/manifests by `bin/aiod models docs --write`; do not edit. -->"


def listing(families: dict[str, Manifest], show_all: bool = False) -> str:
    """One line per version: family, version, tasks, dimensions; only what the user can run
    unless `show_all`."""
    can_run = visible(families)
    rows = [("model", "version", "tasks", "axes", "")]
    for name, manifest in families.items():
        for vname, version in manifest.versions.items():
            tasks = can_run.get(name, {}).get(vname, [])
            if not tasks and not show_all:
                continue
            axes = "/".join(f"{n}D" for n in version.axes.ndim)
            note = "" if tasks else "(no readable location)"
            rows.append((name, vname, ",".join(tasks or version.tasks), axes, note))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + ("  " + r[4] if r[4] else "") for r in rows)


def show(manifest: Manifest, version: str | None) -> str:
    """One family (every version) or one version: parameters with this version's defaults,
    locations and the model card."""
    names = [version] if version else list(manifest.versions)
    out = [f"{manifest.family}: {manifest.description}"]
    for vname in names:
        v = manifest.versions[vname]
        out += ["", f"{manifest.family}/{vname}", f"  tasks: {', '.join(v.tasks)}",
                f"  axes: {'/'.join(f'{n}D' for n in v.axes.ndim)}, channels: {', '.join(map(str, v.axes.channels))}",
                f"  licence: {v.metadata.licence}", f"  citation: {v.metadata.citation}" + (f" doi:{v.metadata.doi}" if v.metadata.doi else "")]
        for tname, task in v.tasks.items():
            for loc in task.locations:
                out.append(f"  location ({tname}): {loc.where}" + (f" (sha256 {loc.sha256})" if loc.sha256 else "")
                           + ("" if loc.visible() else " [not readable by you]"))
        if v.trained:
            out += _trained(v.trained)
        out.append("  parameters:")
        for pname, value in manifest.parameters_of(vname).items():
            p = manifest.parameters[pname]
            out.append(f"    {pname} = {value!r}  ({_range(p)}) {p.help}")
        out += ["  model card:"] + [f"    {line}" for line in v.metadata.model_card.strip().splitlines()]
    return "\n".join(out)


def _trained(t) -> list[str]:
    """How a fine-tuned version was made (registry.Trained), for `aiod models show`."""
    shown = ("f1", "precision", "recall", "ap_50_95", "n_true", "n_pred")
    out = [f"  trained: from {t.parent}" + (f" (sha256 {t.parent_sha256})" if t.parent_sha256 else "") + f" on {t.date}",
           f"    data: {t.data}",
           f"    split ({t.split_from}): " + "; ".join(f"{k}: {', '.join(v) or '-'}" for k, v in t.split.items()),
           f"    parameters: " + ", ".join(f"{k}={v!r}" for k, v in t.params.items()),
           f"    epochs done: {t.epochs_done}, training time: {t.seconds:.0f} s",
           "    test images, pooled:  " + "  ".join(f"{k:>9}" for k in shown)]
    for when in ("before", "after"):
        scores = t.metrics.get(when, {})
        out.append(f"      {when:<18}" + "  ".join(f"{scores.get(k, float('nan')):>9.3f}" if isinstance(scores.get(k), float)
                                               else f"{scores.get(k, '-')!s:>9}" for k in shown))
    return out


def reference(families: dict[str, Manifest]) -> str:
    """docs/models.md: every family, version and parameter, from the manifests."""
    out = [GENERATED, "", "# Models and their parameters", "",
           "Choose with `--model <family> --model_version <version> [--task <task>]`; override parameters with",
           "`--model_params file.yaml` (a mapping `name: value`). The first version of a family and the first",
           "task of a version are the defaults. `bin/aiod models list` shows what you can run;",
           "`bin/aiod models show <family>/<version>` shows one version. Tasks: "
           + ", ".join(f"`{t}` ({d})" for t, d in TASKS.items()) + ".", ""]
    for name, m in families.items():
        out += [f"## `{name}`", "", m.description + ".", "",
                "| version | tasks | axes | licence | reference |", "|---|---|---|---|---|"]
        for vname, v in m.versions.items():
            ref = f"[doi:{v.metadata.doi}](https://doi.org/{v.metadata.doi})" if v.metadata.doi else v.metadata.citation
            out.append(f"| `{vname}` | {', '.join(v.tasks)} | {'/'.join(f'{n}D' for n in v.axes.ndim)} | {v.metadata.licence} | {ref} |")
        versions = list(m.versions)
        out += ["", "| parameter | type | " + " | ".join(f"`{v}`" for v in versions) + " | allowed | meaning |",
                "|---|---|" + "---|" * len(versions) + "---|---|"]
        for pname, p in m.parameters.items():
            defaults = " | ".join(_cell(m.parameters_of(v)[pname]) for v in versions)
            out.append(f"| `{pname}` | {p.type} | {defaults} | {_range(p)} | {p.help} |")
        if m.training:
            out += ["", "Training parameters (`-entry FINETUNE --finetune_params`, docs/finetune.md):", "",
                    "| parameter | type | default | allowed | meaning |", "|---|---|---|---|---|"]
            out += [f"| `{pname}` | {p.type} | {_cell(p.default)} | {_range(p)} | {p.help} |" for pname, p in m.training.items()]
        out.append("")
    return "\n".join(out)


def _cell(value) -> str:
    return "unset" if value is None else f"`{value}`"


def _range(p) -> str:
    parts = []
    if p.choices:
        parts.append(" / ".join(p.choices))
    if p.min is not None or p.max is not None:
        parts.append(f"{'' if p.min is None else f'{p.min:g}'}..{'' if p.max is None else f'{p.max:g}'}")
    parts += [f"'{k}'" for k in p.keywords]
    if p.channel:
        parts.append("an image channel")
    return ", ".join(parts) or "any"
