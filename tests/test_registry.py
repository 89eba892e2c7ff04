"""The model registry: manifests checked with errors that say where and what, requests resolved
against it, lab registries layered on top, and only what a user can read shown to them."""

from __future__ import annotations

import copy
import os

import pytest
import yaml

from aiod import cli, registry
from aiod.errors import ModelError
from aiod.models import resolve
from aiod.registry import ManifestError, load_manifest
from test_artifacts import NOBODY, as_user, needs_root, shared_dir  # noqa: F401 - fixture

LAB = {
    "family": "labnet",
    "description": "a lab's own model",
    "adapter": "classical",
    "parameters": {
        "prob": {"type": "float", "default": 0.5, "min": 0, "max": 1, "help": "probability threshold"},
        "mode": {"type": "str", "default": "fast", "choices": ["fast", "exact"], "help": "how"},
        "nucleus_channel": {"type": "int", "default": 0, "channel": True, "help": "channel of the nuclei"},
    },
    "versions": {
        "v2": {
            "tasks": {"nuclei": {"locations": [{"url": "https://example.org/v2.pt", "sha256": "a" * 64}]}},
            "defaults": {"prob": 0.6},
            "axes": {"ndim": [2], "channels": [1, 2]},
            "metadata": {"authors": ["A Lab"], "citation": "unpublished", "licence": "proprietary", "model_card": "text"},
        },
        "v1": {
            "tasks": {"cyto": {}},
            "axes": {"ndim": [2, 3]},
            "metadata": {"authors": ["A Lab"], "citation": "unpublished", "licence": "proprietary", "model_card": "text"},
        },
    },
}


def write(folder, data, name=None):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name or data['family']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def broken(edit):
    data = copy.deepcopy(LAB)
    edit(data)
    return data


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["versions"]["v2"]["tasks"]["nuclei"]["locations"][0].update(filepth="x"),
     "versions.v2.tasks.nuclei.locations[0]: 'filepth' is not a field (did you mean 'filepath'?); fields: url, filepath, sha256, unpack, config"),
    (lambda d: d["parameters"]["prob"].update(defualt=1),
     "parameters.prob: 'defualt' is not a field (did you mean 'default'?); fields: type, default, help, min, max, choices, keywords, channel"),
    (lambda d: d["versions"]["v2"]["metadata"].pop("licence"), "versions.v2.metadata.licence: required field missing"),
    (lambda d: d["versions"]["v2"]["tasks"].update(nucleii={}), "versions.v2.tasks: unknown task 'nucleii' (did you mean 'nuclei'?)"),
    (lambda d: d["versions"]["v2"]["tasks"]["nuclei"]["locations"][0].update(filepath="/x"),
     "versions.v2.tasks.nuclei.locations[0]: give exactly one of 'url' or 'filepath'"),
    (lambda d: d["versions"]["v2"]["tasks"]["nuclei"]["locations"][0].update(sha256="abc"),
     "versions.v2.tasks.nuclei.locations[0].sha256: String should match pattern '^[0-9a-f]{64}$' (got 'abc')"),
    (lambda d: d["versions"]["v2"]["defaults"].update(prob=2), "versions.v2.defaults.prob: 2 is above the maximum 1"),
    (lambda d: d["versions"]["v2"]["defaults"].update(porb=2), "versions.v2.defaults: 'porb' is not a parameter of this family (did you mean 'prob'?)"),
    (lambda d: d["parameters"]["mode"].update(default="slow"), "parameters.mode: expected one of 'fast', 'exact', got 'slow'"),
    (lambda d: d["versions"]["v1"]["axes"].update(ndim=[4]), "versions.v1.axes.ndim[0]: Input should be 2 or 3 (got 4)"),
    (lambda d: d.update(family="other"), "family: 'other' must match the file name ('labnet.yaml')"),
])
def test_manifest_errors_name_the_file_the_field_and_what_was_expected(tmp_path, edit, message):
    path = write(tmp_path, broken(edit), name="labnet")
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    assert any(line.startswith(f"{path}: {message}") for line in str(err.value).splitlines()), str(err.value)


def test_validate_reports_every_problem_and_the_cli_exits_non_zero(tmp_path, capsys):
    write(tmp_path, broken(lambda d: (d["parameters"]["prob"].update(mn=0), d["versions"]["v1"].pop("axes"))), name="labnet")
    assert len(registry.validate([tmp_path])) == 2
    assert cli.main(["models", "validate", str(tmp_path)]) == 65
    assert capsys.readouterr().err.count("AIOD ERROR:") == 2


def test_the_built_in_manifests_are_valid(capsys):
    assert registry.validate([registry.BUILTIN_DIR]) == []
    assert cli.main(["models", "validate"]) == 0


def test_a_lab_registry_adds_families_and_replaces_one_of_the_same_name(tmp_path):
    write(tmp_path / "lab", LAB)
    write(tmp_path / "lab", {**LAB, "family": "classical", "versions": {"mine": LAB["versions"]["v1"]}})
    families = registry.load_registry([tmp_path / "lab"])
    assert "labnet" in families and list(families["classical"].versions) == ["mine"]
    assert list(registry.load_registry()["classical"].versions) == ["nuclei", "cells"]


def test_a_missing_registry_directory_is_named(tmp_path):
    with pytest.raises(ManifestError, match=f"{tmp_path / 'nope'}: registry directory not found"):
        registry.load_registry([tmp_path / "nope"])


def test_defaults_are_the_first_version_and_its_first_task_with_its_defaults(tmp_path):
    write(tmp_path, LAB)
    spec = resolve("labnet", None, None, {}, [tmp_path])
    assert (spec["version"], spec["task"], spec["adapter"]) == ("v2", "nuclei", "classical")
    assert spec["params"] == {"prob": 0.6, "mode": "fast", "nucleus_channel": 0}
    assert spec["channel_params"] == ["nucleus_channel"]
    assert spec["locations"] == [{"url": "https://example.org/v2.pt", "sha256": "a" * 64, "config": {}}]


def test_overrides_are_typed(tmp_path):
    write(tmp_path, LAB)
    spec = resolve("labnet", "v2", "nuclei", {"prob": 1, "mode": "exact"}, [tmp_path])
    assert spec["params"]["prob"] == 1.0 and isinstance(spec["params"]["prob"], float)


@pytest.mark.parametrize("request_, message", [
    (("nosuchnet", None, None, {}), "unknown model 'nosuchnet'; models: "),
    (("labnte", None, None, {}), "unknown model 'labnte' (did you mean 'labnet'?); models: "),
    (("labnet", "v3", None, {}), "unknown version 'v3' of model 'labnet'; versions: v2, v1"),
    (("labnet", "v2", "cyto", {}), "unknown task 'cyto' of labnet/v2; tasks: nuclei"),
    (("labnet", "v2", None, {"prb": 1}), "p.yaml: unknown parameter 'prb' for labnet/v2 (did you mean 'prob'?); parameters: prob, mode, nucleus_channel"),
    (("labnet", "v2", None, {"prob": 1.5}), "p.yaml: parameter 'prob' of labnet/v2: 1.5 is above the maximum 1"),
    (("labnet", "v2", None, {"prob": "high"}), "p.yaml: parameter 'prob' of labnet/v2: expected a number, got 'high'"),
    (("labnet", "v2", None, {"mode": "slow"}), "p.yaml: parameter 'mode' of labnet/v2: expected one of 'fast', 'exact', got 'slow'"),
    (("labnet", "v2", None, {"nucleus_channel": -1}), "p.yaml: parameter 'nucleus_channel' of labnet/v2: -1 is not a channel"),
    (("classical", "nuclei", None, {"min_size": 2.5}), "p.yaml: parameter 'min_size' of classical/nuclei: expected an integer, got 2.5"),
])
def test_bad_requests_are_refused_with_the_valid_choices(tmp_path, request_, message):
    write(tmp_path, LAB)
    with pytest.raises(ModelError) as err:
        resolve(*request_, [tmp_path], source="p.yaml")
    assert str(err.value).startswith(message)


def test_a_keyword_is_accepted_where_the_parameter_allows_it():
    assert resolve("classical", "nuclei", None, {"threshold": "otsu"})["params"]["threshold"] == "otsu"
    with pytest.raises(ModelError, match="expected a number or 'otsu', got 'mean'"):
        resolve("classical", "nuclei", None, {"threshold": "mean"})


def test_list_and_show_describe_the_registry(tmp_path, capsys):
    write(tmp_path, LAB)
    assert cli.main(["models", "list", "--registry-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "version", "tasks", "axes"]
    assert ["labnet", "v2", "nuclei", "2D"] in [line.split() for line in lines]
    assert cli.main(["models", "show", "labnet/v2", "--registry-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "prob = 0.6  (0..1) probability threshold" in text and "location (nuclei): https://example.org/v2.pt" in text
    assert cli.main(["models", "show", "labnet/v9", "--registry-dir", str(tmp_path)]) == 65


def listing_as_user(folder):
    from aiod import catalogue
    return catalogue.listing(registry.load_registry([folder]))


@needs_root
def test_a_filepath_model_is_listed_and_resolved_only_for_users_who_can_read_it(shared_dir):
    weights = shared_dir / "private.pt"
    weights.write_bytes(b"weights")
    weights.chmod(0o600)
    write(shared_dir / "lab", {**LAB, "versions": {"private": {**LAB["versions"]["v1"], "tasks": {"cyto": {"locations": [{"filepath": str(weights)}]}}}}})
    os.chmod(shared_dir / "lab", 0o755)
    os.chmod(shared_dir / "lab" / "labnet.yaml", 0o644)
    assert "labnet" in listing_as_user(shared_dir / "lab")
    as_nobody, error = as_user(NOBODY, listing_as_user, shared_dir / "lab")
    assert error is None and "labnet" not in as_nobody and "classical" in as_nobody
    _, error = as_user(NOBODY, resolve, "labnet", None, None, {}, [shared_dir / "lab"])
    assert error == f"ModelError: labnet/private/cyto: none of its artifact locations is readable by you: {weights}"
