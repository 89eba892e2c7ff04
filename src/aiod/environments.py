"""Build and find the model families' Python environments, once per machine (or shared disk).

The commands (`bin/aiod-env COMMAND`, the door that runs before any environment exists, or
`aiod env COMMAND`):

    aiod-env build FAMILY... | all   build what is missing, print each environment's path
    aiod-env path FAMILY             print the environment's path (an error if it is not built)
    aiod-env bin-path FAMILY         build if missing, print "<env>/bin:$PATH": a task's PATH
                                     (`-profile venv`); prints nothing if the build fails
    aiod-env list                    every family: its environment, built or not

FAMILY is a name with an `envs/<FAMILY>.txt` in the project (cellpose, stardist, ...) or the
path of a requirements file of one's own (e.g. a GPU site's copy of envs/stardist.txt).

Each environment is a uv virtual environment in $AIOD_ENVS_DIR (default ~/.cache/aiod/envs),
named `<family>-<hash>`: the hash covers the requirements file's text and the Python asked for
(AIOD_ENV_PYTHON, default 3.11), so an edited file gives a new environment and never changes a
built one. Many tasks may ask at once: one builds under an exclusive lock (flock), into a
temporary folder that is renamed into place only when complete (the environment is made
relocatable for that); the others wait for the lock and find it done. uv installs from its
cache by hard links (UV_CACHE_DIR, by default ~/.cache/uv; keep it on the same file system as
the environments): five families share one copy of torch.

A requirements file may carry lines that pip reads as comments and this tool obeys:
    # aiod-env: build-env NAME=VALUE         set while building (e.g. SAM2_BUILD_CUDA=0)
    # aiod-env: no-build-isolation PACKAGE   install PACKAGE in a second step, without build
                                             isolation (its build imports what the first installed)

Standard library only (bin/aiod imports it before any environment exists, to find the
task's). uv comes from PATH, from
$AIOD_UV, or is installed with pip into $AIOD_ENVS_DIR/.uv on first use.
"""

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

PROJECT = Path(os.path.realpath(__file__)).parents[2]  # src/aiod/environments.py -> the project
FORMAT = "aiod-env 1"  # part of every hash: bump when the way environments are built changes
DONE = "aiod-env.json"  # written last inside an environment, before the rename


def log(message):
    print(f"aiod-env: {message}", file=sys.stderr, flush=True)


def fail(message):
    log(message)
    sys.exit(1)


def envs_dir(args):
    return Path(args.dir or os.environ.get("AIOD_ENVS_DIR") or Path.home() / ".cache" / "aiod" / "envs")


def python_request():
    return os.environ.get("AIOD_ENV_PYTHON", "3.11")


def families():
    """Families with both a conda file and a pip file in envs/."""
    return sorted(p.stem for p in (PROJECT / "envs").glob("*.txt") if p.with_suffix(".yml").exists())


class Spec:
    """One family's requirements file and the environment it names."""

    def __init__(self, family_or_file, root):
        path = Path(family_or_file)
        if path.suffix == ".txt" and path.exists():
            self.file = path.resolve()
            self.family = path.stem
        else:
            self.family = family_or_file
            self.file = PROJECT / "envs" / f"{family_or_file}.txt"
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", family_or_file) or not self.file.exists():
                fail(f"unknown family '{family_or_file}': no {self.file} (families: {', '.join(families())})")
        self.text = self.file.read_text()
        self.python = python_request()
        digest = hashlib.sha256(f"{FORMAT}\n{self.python}\n{self.text}".encode()).hexdigest()
        self.name = f"{self.family}-{digest[:16]}"
        self.root = root
        self.path = root / self.name

    @property
    def built(self):
        return (self.path / DONE).exists()

    def directives(self, word):
        return [m.group(1).strip() for m in re.finditer(rf"^#\s*aiod-env:\s*{word}\s+(\S.*)$", self.text, re.M)]

    def requirement_lines(self, leave_out=()):
        lines = [l.strip() for l in self.text.splitlines()]
        lines = [l for l in lines if l and not l.startswith("#")]
        name = lambda line: re.split(r"[\s<>=!~;\[@]", line, maxsplit=1)[0].lower().replace("_", "-")
        return [l for l in lines if name(l) not in {p.lower().replace("_", "-") for p in leave_out}]


@contextmanager
def locked(lock_path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for {lock_path} (another build is running)")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def find_uv(root):
    for candidate in (os.environ.get("AIOD_UV"), shutil.which("uv"), str(root / ".uv" / "bin" / "uv")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    with locked(root / ".locks" / "uv.lock"):
        target = root / ".uv"
        if not (target / "bin" / "uv").exists():
            log(f"uv not found: installing it with pip into {target}")
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target), "uv"], check=True)
    return str(target / "bin" / "uv")


def run(cmd, env=None):
    log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} {cmd[1]} exited with {proc.returncode}")


def build(spec):
    """Build `spec`'s environment unless it exists; return its path."""
    if spec.built:
        return spec.path
    root = spec.root
    with locked(root / ".locks" / f"{spec.name}.lock"):
        if spec.built:  # another task built it while this one waited
            return spec.path
        for stale in root.glob(f".tmp-{spec.name}-*"):  # left by a killed build: we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        if spec.path.exists():  # not complete (no DONE file): never reuse it
            shutil.rmtree(spec.path)
        uv = find_uv(root)
        tmp = root / f".tmp-{spec.name}-{os.getpid()}"
        start = time.time()
        try:
            install(uv, spec, tmp)
            (tmp / "aiod-requirements.txt").write_text(spec.text)
            uv_version = subprocess.run([uv, "--version"], capture_output=True, text=True).stdout.strip()
            record = {"family": spec.family, "name": spec.name, "requirements": str(spec.file),
                      "python": spec.python, "uv": uv_version, "build_seconds": round(time.time() - start, 1),
                      "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (tmp / DONE).write_text(json.dumps(record, indent=1) + "\n")
            os.rename(tmp, spec.path)
            # Bytecode now, in place (uv installs none): every task imports these libraries, and
            # where the environment is read-only or PYTHONDONTWRITEBYTECODE is set, each import
            # would compile them again (about 1 s per task for numpy/scipy/zarr, more for torch).
            subprocess.run([str(spec.path / "bin" / "python"), "-m", "compileall", "-q", "-j", "0", str(spec.path / "lib")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            # The object table's compiled pass (aiod.block_pass), into the environment's numba
            # cache, so that tasks load it instead of compiling it (about 1 s per type each)
            subprocess.run([str(spec.path / "bin" / "python"), "-c", "from aiod import block_pass; block_pass.warm()"],
                           env={**{k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"},
                                "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, (RuntimeError, OSError)):
                fail(f"building {spec.name} from {spec.file} failed: {exc}")
            raise
    log(f"built {spec.path} in {time.time() - start:.0f} s")
    return spec.path


def install(uv, spec, tmp):
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    for assignment in spec.directives("build-env"):
        key, _, value = assignment.partition("=")
        env[key.strip()] = value.strip()
    run([uv, "venv", "-q", "--relocatable", "--python", spec.python, str(tmp)], env)
    python = str(tmp / "bin" / "python")
    late = spec.directives("no-build-isolation")
    first = tmp / "aiod-requirements-first.txt"
    first.write_text("\n".join(spec.requirement_lines(leave_out=late)) + "\n")
    run([uv, "pip", "install", "-q", "--python", python, "-r", str(first)], env)
    first.unlink()
    if late:
        every = tmp / "aiod-requirements-all.txt"
        every.write_text("\n".join(spec.requirement_lines()) + "\n")
        no_isolation = [a for pkg in late for a in ("--no-build-isolation-package", pkg)]
        run([uv, "pip", "install", "-q", "--python", python, *no_isolation, "-r", str(every)], env)
        every.unlink()


def main(argv=None, prog="aiod-env"):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="where environments live (default $AIOD_ENVS_DIR or ~/.cache/aiod/envs)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build the families' environments if missing; print their paths")
    p_build.add_argument("families", nargs="+", metavar="FAMILY", help="a family, a requirements file, or 'all'")
    p_path = sub.add_parser("path", help="print a built environment's path")
    p_path.add_argument("family", metavar="FAMILY")
    p_bin = sub.add_parser("bin-path", help="build if missing; print the environment's bin/ followed by $PATH")
    p_bin.add_argument("family", metavar="FAMILY")
    sub.add_parser("list", help="every family's environment and whether it is built")
    args = parser.parse_args(argv)
    root = envs_dir(args)

    if args.command == "build":
        names = families() if args.families == ["all"] else args.families
        specs = [Spec(name, root) for name in names]
        for spec in specs:
            print(build(spec), flush=True)
    elif args.command == "bin-path":
        print(f"{build(Spec(args.family, root)) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    elif args.command == "path":
        spec = Spec(args.family, root)
        if not spec.built:
            fail(f"{spec.family}: {spec.path} is not built (run: {prog} build {args.family})")
        print(spec.path)
    else:
        for family in families():
            spec = Spec(family, root)
            print(f"{family:12s} {'built  ' if spec.built else 'missing'} {spec.path}")
    return 0
