"""The Dockerfile's guarantees, checked without a Docker daemon (none on the machines that run the tests).

Static checks of the Dockerfile, .dockerignore (with a matcher following Docker's rules), constraints.txt
and the Makefile; the image's requirement lister and HEALTHCHECK command run for real; and a slow check
that installs the runner image's dependencies into a fresh venv the way its build does, then runs the
README's runner commands there.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def _logical_lines(text: str) -> list[str]:
    """Instructions with their continuation lines joined; comment lines dropped, as Docker does."""
    lines, current = [], ""
    for raw in text.splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        lines.append(current + raw.strip())
        current = ""
    return lines


def _stages() -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    stage = None
    for line in _logical_lines((ROOT / "Dockerfile").read_text()):
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            base, _, name = args.partition(" AS ")
            stage = stages[name.strip()] = Stage(name.strip(), base.strip())
        elif stage is not None:
            stage.instructions.append((keyword.upper(), args.strip()))
    return stages


STAGES = _stages()


def _chain(name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, base first."""
    chain = []
    while name in STAGES:
        chain.insert(0, STAGES[name])
        name = STAGES[name].base
    return chain


def _inherited(name: str, keyword: str) -> list[str]:
    return [args for stage in _chain(name) for args in stage.args(keyword)]


def _run_with(stage: str, needle: str) -> str:
    runs = [args for args in _inherited(stage, "RUN") if needle in args]
    assert runs, f"{stage}: no RUN with {needle!r}"
    return runs[0]


# ---- .dockerignore: Docker's matching (moby/patternmatcher) ------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """`**` any number of path segments (none included), `*` and `?` within one segment."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((negated, _pattern_regex(os.path.normpath(line.lstrip("!")).lstrip("/"))))
    return rules


def excluded(path: str) -> bool:
    """Whether the build context leaves `path` out: the last matching rule for it or a parent folder wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negated, regex in _ignore_rules():
        if any(regex.match(prefix) for prefix in prefixes):
            result = not negated
    return result


@pytest.mark.parametrize(
    "path",
    [
        "robot1.key_secret",
        "keys/robot1.key_secret",
        "keys/robot1.key",
        "policies/hopper/x.key_secret",
        "policies/hopper/keys/learner.key",
        "policies/hopper/policy.sign",
        "a/b/c/d/signing.key_secret",
        "runs/session/policy/v3.onnx",
        ".venv/bin/python",
    ],
)
def test_dockerignore_leaves_secrets_and_local_state_out(path):
    assert excluded(path)


@pytest.mark.parametrize(
    "path",
    [
        "robot_wsrl/wire/keys.py",
        "policies/hopper/policy.onnx",
        "policies/hopper/policy.json",
        "policies/hopper/checkpoint.pt",
        "pyproject.toml",
        "constraints.txt",
        "README.md",
        "configs/config.yaml",
        "robot_wsrl/robot/drivers/null.py",
    ],
)
def test_dockerignore_keeps_what_the_images_need(path):
    assert not excluded(path)


def test_the_matcher_follows_docker_rules():
    assert _pattern_regex("**/keys").match("keys") and _pattern_regex("**/keys").match("a/b/keys")
    assert not _pattern_regex("**/keys").match("a/keys.py")
    assert not _pattern_regex("*.sign").match("a/b.sign")  # one level only without **
    assert _pattern_regex("docs").match("docs") and not _pattern_regex("docs").match("a/docs")


def test_every_copied_source_is_in_the_build_context():
    for stage in STAGES.values():
        for args in stage.args("COPY"):
            if args.startswith("--from="):
                continue
            for source in shlex.split(args)[:-1]:
                assert (ROOT / source).exists(), f"{stage.name}: COPY {source}: no such file"
                assert not excluded(source), f"{stage.name}: COPY {source}: left out by .dockerignore"


# ---- the Dockerfile ----------------------------------------------------------------------------------


def test_no_syntax_directive():
    """`# syntax=` makes BuildKit pull a frontend image: offline builds break."""
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE)


@pytest.mark.parametrize("stage", ["runner", "learner"])
def test_a_stop_reaches_robot_wsrl_as_sigterm_through_an_init(stage):
    assert _inherited(stage, "STOPSIGNAL")[-1] == "SIGTERM"
    entrypoint = json.loads(_inherited(stage, "ENTRYPOINT")[-1])
    assert Path(entrypoint[0]).name == "tini" and entrypoint[1:] == ["--", "robot-wsrl"]
    assert re.search(r"apt-get install [^&]*\btini\b", _run_with(stage, "tini"))


@pytest.mark.parametrize("stage", ["runner", "learner"])
def test_images_run_as_a_user_with_mujoco_headless_and_a_healthcheck(stage):
    assert _inherited(stage, "USER")[-1] not in ("root", "0")
    assert any(re.search(r"\bMUJOCO_GL=\w+", env) for env in _inherited(stage, "ENV"))
    assert "robot-wsrl status" in _inherited(stage, "HEALTHCHECK")[-1]


def _pip_installs(stage: str) -> list[str]:
    return [
        part.strip()
        for args in STAGES[stage].args("RUN")
        for part in args.split("&&")
        if part.strip().startswith("pip install")
    ]


@pytest.mark.parametrize("stage", ["runner", "learner"])
def test_dependencies_install_before_the_sources_are_copied(stage):
    instructions = STAGES[stage].instructions
    deps = next(
        i for i, (kw, args) in enumerate(instructions) if kw == "RUN" and "-r /tmp/requirements.txt" in args
    )
    copies_before = [args for kw, args in instructions[:deps] if kw == "COPY"]
    assert copies_before == ["pyproject.toml constraints.txt ./"]
    first_source = next(
        i for i, (kw, args) in enumerate(instructions) if kw == "COPY" and "robot_wsrl" in args
    )
    assert deps < first_source
    project = [cmd for cmd in _pip_installs(stage) if "-e ." in cmd]
    assert project and all("--no-deps" in cmd for cmd in project)


@pytest.mark.parametrize("stage", ["runner", "learner"])
def test_every_pip_install_but_torch_uses_the_constraints(stage):
    for cmd in _pip_installs(stage):
        if "torch==" in cmd or "--no-deps" in cmd:
            continue
        assert "-c constraints.txt" in cmd, cmd


def test_runner_image_has_the_shipped_policy_and_no_torch():
    copies = STAGES["runner"].args("COPY")
    assert "--from=runner-policies /policies ./policies" in copies
    assert STAGES["runner-policies"].args("COPY") == ["policies /policies"]
    dropped = STAGES["runner-policies"].args("RUN")
    assert dropped == ["find /policies -name '*.pt' -delete"]
    shipped = [p.relative_to(ROOT).as_posix() for p in (ROOT / "policies").rglob("*") if p.is_file()]
    in_image = {p for p in shipped if not excluded(p) and not p.endswith(".pt")}
    assert {"policies/hopper/policy.onnx", "policies/hopper/policy.json"} <= in_image
    guard = _run_with("runner", "import torch")
    assert re.search(r'if python -c "import torch".*then .*exit 1', guard)
    assert "--policy policies/hopper/policy.onnx" in guard


def test_learner_can_compile_on_a_slim_base():
    learner = _chain("learner")
    assert all("nvidia/cuda" not in stage.base for stage in learner)
    assert re.search(r"apt-get install [^&]*\bbuild-essential\b", _run_with("learner", "build-essential"))
    check = _run_with("learner", "torch.compile")
    assert check.rstrip().endswith("&& rm -rf /tmp/*"), "the build's compile caches would be root's in /tmp"
    assert any("TRITON_CACHE_DIR=/tmp/" in env for env in STAGES["learner"].args("ENV"))
    assert '"torch==${TORCH_VERSION}"' in _run_with("learner", "torch==")
    assert "ARG TORCH_VERSION=2.13.0" in (ROOT / "Dockerfile").read_text()


LISTER = "/usr/local/bin/pyproject-requirements"


def _requirements(extras: str, tmp_path: Path) -> list[str]:
    """The image's `pyproject-requirements EXTRAS`: its RUN line made by sh (to tmp_path), then run."""
    script = tmp_path / "pyproject-requirements"
    subprocess.run(["sh", "-c", _run_with("base", LISTER).replace(LISTER, str(script))], check=True)
    out = subprocess.run(
        [sys.executable, script, extras], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout.splitlines()


def test_requirement_lister_reads_pyproject(tmp_path):
    robot = {canonicalize_name(Requirement(r).name) for r in _requirements("robot", tmp_path)}
    assert {"setuptools", "numpy", "onnxruntime", "pyzmq", "msgpack", "cryptography"} <= robot
    assert "torch" not in robot
    learner = {canonicalize_name(Requirement(r).name) for r in _requirements("learner,sim", tmp_path)}
    assert {"torch", "hydra-core", "mujoco", "gymnasium", "numpy"} <= learner


def test_healthcheck_command(tmp_path):
    """Empty ROBOT_WSRL_HEALTH: nothing to check (0); a runner that does not answer: unhealthy (1, the
    one failure status Docker documents)."""
    command = re.sub(r"^(--\S+\s+)*CMD\s+", "", _inherited("runner", "HEALTHCHECK")[-1])
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    def health(value: str) -> int:
        env["ROBOT_WSRL_HEALTH"] = value
        return subprocess.run(["sh", "-c", command], env=env, cwd=tmp_path, timeout=120).returncode

    assert health("") == 0
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert health(f"--runner robot1=tcp://127.0.0.1:{port} --plain") == 1


# ---- constraints.txt and the Makefile ---------------------------------------------------------------


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version.strip(), f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_constraints_pin_every_dependency_but_torch_and_the_project():
    pins = _pins()
    assert "torch" not in pins and "robot-wsrl" not in pins
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = project["build-system"]["requires"] + project["project"]["dependencies"]
    declared += [r for reqs in project["project"]["optional-dependencies"].values() for r in reqs]
    for text in declared:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {req}"


def test_make_installs_with_the_constraints_torch_first():
    recipe = (ROOT / "Makefile").read_text()
    torch = recipe.index('pip install --quiet "torch==2.13.0"')
    project = recipe.index('pip install --quiet -c constraints.txt -e ".[sim,learner,console,dev]"')
    assert torch < project
    assert re.search(r"^\$\(STAMP\):.*\bconstraints\.txt\b", recipe, re.MULTILINE)


# ---- the runner image's install, done in a fresh venv -------------------------------------------------


def _copy_runner_context(dest: Path) -> None:
    """The files the runner stage's COPY lines take from the build context (.dockerignore applied), and
    policies/ as its runner-policies stage leaves it (no *.pt)."""
    copies = [args for args in STAGES["runner"].args("COPY") if not args.startswith("--from=")]
    sources = [source for args in copies for source in shlex.split(args)[:-1]] + ["policies"]

    def ignore(folder: str, names: list[str]) -> list[str]:
        rel = Path(folder).relative_to(ROOT)
        return [n for n in names if excluded((rel / n).as_posix()) or n.endswith(".pt")]

    dest.mkdir()
    for source in sources:
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, dest / source, ignore=ignore)
        else:
            shutil.copy(ROOT / source, dest / source)


@pytest.mark.slow
def test_runner_install_in_a_fresh_venv(tmp_path):
    """What the runner stage does, outside Docker: its base requirements from pyproject.toml with the
    constraints (a real install, from the local package caches where present), the sources copied as its
    COPY lines list them, the project with --no-deps; then no torch, and the README's runner commands."""
    venv, src = tmp_path / "venv", tmp_path / "src"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--quiet"]
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(_requirements("robot", tmp_path)) + "\n")
    subprocess.run(
        [*pip, "install", "-r", requirements, "-c", ROOT / "constraints.txt"], check=True, timeout=300
    )
    _copy_runner_context(src)
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", "-e", src], check=True, timeout=300)
    subprocess.run([*pip, "check"], check=True, timeout=120)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MUJOCO_GL": "disable", "PYTHONPATH": ""}
        return subprocess.run(
            args, cwd=src, env=env, capture_output=True, text=True, timeout=120, check=False
        )

    assert run(str(python), "-c", "import torch").returncode != 0
    robot_wsrl = str(venv / "bin" / "robot-wsrl")
    assert run(robot_wsrl, "runner", "--help").returncode == 0
    assert run(robot_wsrl, "link-runner", "--help").returncode == 0
    ran = run(
        robot_wsrl, "runner", "--driver", "null", "--policy", "policies/hopper/policy.onnx",
        "--steps", "50", "--no-realtime", "--state", str(tmp_path / "state"),
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
