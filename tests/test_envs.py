"""Every family's environment is declared twice, for conda users and for pip/uv: one list of
packages and pins in two files; the classical one is also the package's declared dependencies."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pipeline_helpers import ROOT

ENVS = ROOT / "envs"
FAMILIES = sorted(p.stem for p in ENVS.glob("*.yml"))


def requirement_lines(path):
    return sorted(l.strip() for l in path.read_text().splitlines() if l.strip() and not l.startswith("#"))


def name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower()


def conda_env(family):
    import yaml
    return yaml.safe_load((ENVS / f"{family}.yml").read_text())


def test_every_family_of_the_issue_has_both_files():
    assert {"classical", "cellpose", "cellposesam", "stardist", "sam2", "empanada"} <= set(FAMILIES)
    assert all((ENVS / f"{family}.txt").exists() for family in FAMILIES)


def test_pyproject_dependencies_equal_the_classical_environment():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == requirement_lines(ENVS / "classical.txt")


@pytest.mark.parametrize("family", FAMILIES)
def test_conda_file_is_a_conda_environment_named_for_its_family(family):
    env = conda_env(family)
    assert set(env) == {"name", "channels", "dependencies"}
    assert env["name"] == f"aiod-{family}"
    assert env["channels"] == ["conda-forge"]
    pip_sections = [d for d in env["dependencies"] if isinstance(d, dict)]
    assert all(set(d) == {"pip"} and isinstance(d["pip"], list) for d in pip_sections)
    assert not pip_sections or "pip" in env["dependencies"]  # conda needs pip to run a pip section
    assert any(isinstance(d, str) and d.startswith("python") for d in env["dependencies"])


@pytest.mark.parametrize("family", FAMILIES)
def test_conda_file_has_the_same_packages_and_pins_as_the_pip_file(family):
    deps = conda_env(family)["dependencies"]
    conda = [d for d in deps if isinstance(d, str) and name(d) not in ("python", "pip")]
    pip = [p for d in deps if isinstance(d, dict) for p in d["pip"]]
    assert sorted(d.replace(" ", "") for d in conda + pip) == requirement_lines(ENVS / f"{family}.txt")


@pytest.mark.parametrize("family", FAMILIES)
def test_family_environment_holds_the_pipeline_packages_for_its_steps(family):
    """FETCH_ARTIFACTS, PLAN and SEGMENT (bin/aiod) run inside the family's environment (SEGMENT
    writes a one-substack image's result and object table); the report's packages serve only
    steps that run in the pipeline's own."""
    family_packages = {name(r) for r in requirement_lines(ENVS / f"{family}.txt")}
    own_steps_only = {"jinja2", "matplotlib"}
    assert {name(r) for r in requirement_lines(ENVS / "classical.txt")} - own_steps_only <= family_packages


def test_families_that_share_a_library_pin_the_same_version_so_uv_shares_one_copy():
    pins: dict[str, set[str]] = {}
    for family in FAMILIES:
        for requirement in requirement_lines(ENVS / f"{family}.txt"):
            if name(requirement) in ("torch", "torchvision"):
                pins.setdefault(name(requirement), set()).add(requirement)
    assert pins and all(len(versions) == 1 for versions in pins.values()), pins


def test_cellpose_3_and_4_live_in_different_environments():
    assert "cellpose==3.1.1.3" in requirement_lines(ENVS / "cellpose.txt")
    assert any(r.startswith("cellpose==4.") for r in requirement_lines(ENVS / "cellposesam.txt"))


# bin/aiod-env: the tool that builds the pip environments (profile `venv`, family tests)

AIOD_ENV = ROOT / "bin" / "aiod-env"


def aiod_env(tmp_path, *args):
    env = {**os.environ, "AIOD_ENVS_DIR": str(tmp_path / "envs")}
    return subprocess.Popen([sys.executable, str(AIOD_ENV), *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture
def small_requirements(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("# a family of one small package\npyyaml>=6\n")
    return path


def test_aiod_env_builds_once_when_many_tasks_ask_at_the_same_time(tmp_path, small_requirements):
    procs = [aiod_env(tmp_path, "build", small_requirements) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    paths = {o[0].strip() for o in outs}
    assert len(paths) == 1
    env = Path(paths.pop())
    assert sum("built " in o[1] for o in outs) == 1  # one built it, the others found it
    assert (env / "aiod-env.json").exists() and (env / "bin" / "python").exists()
    assert not list(env.parent.glob(".tmp-*"))  # nothing half-built is left


def test_aiod_env_gives_an_edited_requirements_file_a_new_environment(tmp_path, small_requirements):
    first = aiod_env(tmp_path, "build", small_requirements).communicate(timeout=600)[0].strip()
    small_requirements.write_text("pyyaml>=6\n# edited\n")
    second = aiod_env(tmp_path, "build", small_requirements).communicate(timeout=600)[0].strip()
    assert first != second and Path(first).exists() and Path(second).exists()
    assert Path(first).name.startswith("tiny-") and Path(second).name.startswith("tiny-")


def test_aiod_env_path_of_an_environment_not_built_is_an_error_naming_the_build_command(tmp_path):
    proc = aiod_env(tmp_path, "path", "stardist")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and out == ""
    assert "is not built (run: " in err and "build stardist" in err


def test_aiod_env_bin_path_prints_nothing_when_the_family_is_unknown(tmp_path):
    proc = aiod_env(tmp_path, "bin-path", "nosuchfamily")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and out == ""
    assert "unknown family 'nosuchfamily'" in err


def test_aiod_env_is_also_the_packages_aiod_env_command_in_the_system_python(tmp_path):
    """bin/aiod-env is a door to aiod.environments, which needs nothing but the standard library
    (it runs before any environment exists): `aiod env` is the same tool."""
    env = {**os.environ, "AIOD_ENVS_DIR": str(tmp_path / "envs")}
    door = subprocess.run(["/usr/bin/python3", "-I", str(AIOD_ENV), "list"], env=env, capture_output=True, text=True)
    command = subprocess.run([sys.executable, str(ROOT / "bin" / "aiod"), "env", "list"], env=env, capture_output=True, text=True)
    assert door.returncode == command.returncode == 0, door.stderr + command.stderr
    assert door.stdout == command.stdout and door.stdout.count("missing") == len(FAMILIES)
    missing = subprocess.run([sys.executable, str(ROOT / "bin" / "aiod"), "env", "path", "stardist"], env=env,
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "(run: aiod env build stardist)" in missing.stderr


def test_the_napari_front_ends_conda_file_has_the_plugins_packages_and_pins():
    """envs/napari/environment.yml (a subfolder: not a family) against napari-aiod/pyproject.toml."""
    import yaml
    env = yaml.safe_load((ENVS / "napari" / "environment.yml").read_text())
    assert env["name"] == "aiod-napari" and env["channels"] == ["conda-forge"]
    conda = [d for d in env["dependencies"] if isinstance(d, str) and name(d) not in ("python", "pip", "pyqt")]
    pip = [p for d in env["dependencies"] if isinstance(d, dict) for p in d["pip"]]
    plugin = tomllib.loads((ROOT / "napari-aiod" / "pyproject.toml").read_text())["project"]
    assert sorted(d.replace(" ", "") for d in conda + pip) == sorted(d.replace(" ", "") for d in plugin["dependencies"])
    assert "napari" not in FAMILIES  # bin/aiod-env and the pipeline take envs/*.yml as families
