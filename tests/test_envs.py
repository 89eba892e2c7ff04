"""The package's declared dependencies are the environment's pins (one list, two files)."""

from __future__ import annotations

import tomllib

from pipeline_helpers import ROOT


def requirement_lines(path):
    return sorted(l.strip() for l in path.read_text().splitlines() if l.strip() and not l.startswith("#"))


def test_pyproject_dependencies_equal_the_classical_environment():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == requirement_lines(ROOT / "envs" / "classical.txt")


def test_conda_file_has_the_same_packages_and_pins_as_the_pip_file():
    import yaml
    conda = yaml.safe_load((ROOT / "envs" / "classical.yml").read_text())
    deps = sorted(d.replace(" ", "") for d in conda["dependencies"] if not d.startswith("python"))
    assert deps == requirement_lines(ROOT / "envs" / "classical.txt")
