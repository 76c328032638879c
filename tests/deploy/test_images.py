"""Both Dockerfiles: hadolint clean, and consistent with the pins and layout they build from.

No image is built here (no Docker engine on these machines); the kind e2e (tests/e2e/) builds both.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OPERATOR_DOCKERFILE = REPO / "Dockerfile"
TRAINER_DOCKERFILE = REPO / "trainer_image" / "Dockerfile"
DOCKERFILES = [OPERATOR_DOCKERFILE, TRAINER_DOCKERFILE]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(s for s in path.read_text().splitlines() if not s.lstrip().startswith("#")))
    pairs = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def _dockerignored(relative: str) -> bool:
    """Whether Docker leaves `relative` out of the build context (.dockerignore: last match wins)."""
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip() and p[0] != "#"]
    parts = relative.strip("/").split("/")
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        # A pattern matches a path or any of its parents; `**/` matches any number of directories.
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        regex = fnmatch.translate(pattern).replace(".*.*/", "(.*/)?")
        if any(re.fullmatch(regex, c) for c in candidates):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=["operator", "trainer"])
def test_hadolint_is_clean(hadolint: str, dockerfile: Path) -> None:
    done = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=["operator", "trainer"])
def test_every_copied_source_is_in_the_build_context(dockerfile: Path) -> None:
    copies = [args for word, args in _instructions(dockerfile) if word == "COPY" and "--from=" not in args]
    assert copies
    for args in copies:
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source}: not in the repository"
            assert not _dockerignored(source), f"{dockerfile.name}: COPY {source}: excluded by .dockerignore"


def test_build_context_holds_every_package_and_nothing_heavy() -> None:
    roots = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["where"]
    for root in roots:
        for package in (REPO / root).iterdir():
            if package.is_dir() and (package / "__init__.py").exists():
                assert not _dockerignored(f"{root}/{package.name}/__init__.py"), package
    for heavy in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "helm/values.yaml", "out/model.safetensors",
                  "operator/sftjob_api/__pycache__/types.cpython-311.pyc"):
        assert _dockerignored(heavy), heavy


def test_operator_image_installs_only_the_operator_extra() -> None:
    runs = " ".join(args for word, args in _instructions(OPERATOR_DOCKERFILE) if word == "RUN")
    assert [m.strip() for m in re.findall(r"pip install [^&]*", runs)] == ['pip install --no-cache-dir "./[operator]"']
    assert "torch" not in PYPROJECT["project"]["optional-dependencies"]["operator"]


def test_trainer_image_matches_the_pinned_ray_and_python() -> None:
    base = next(args for word, args in _instructions(TRAINER_DOCKERFILE) if word == "ARG" and args.startswith("RAY_"))
    match = re.fullmatch(r"RAY_IMAGE=rayproject/ray:(?P<ray>[\d.]+)-py(?P<py>\d)(?P<minor>\d+)-gpu", base)
    assert match, base
    trainer = PYPROJECT["project"]["optional-dependencies"]["trainer"]
    assert f"ray[train]=={match['ray']}" in trainer
    assert f">={match['py']}.{match['minor']}" == PYPROJECT["project"]["requires-python"]
    assert f"ray.__version__ == '{match['ray']}'" in TRAINER_DOCKERFILE.read_text()
    runs = " ".join(args for word, args in _instructions(TRAINER_DOCKERFILE) if word == "RUN")
    assert [m.strip() for m in re.findall(r"pip install [^&]*", runs)] == ['pip install --no-cache-dir "./[trainer]"']
    # CUDA torch: PyPI's Linux wheel of the pinned torch is the CUDA build; the image checks it got one.
    assert any(dep.startswith("torch==") for dep in trainer)
    assert "assert torch.version.cuda" in TRAINER_DOCKERFILE.read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=["operator", "trainer"])
def test_images_run_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    users = [args for word, args in _instructions(dockerfile) if word == "USER"]
    assert users, "no USER: the image would run as its base image's user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0


def test_operator_entrypoint_runs_the_operator_module() -> None:
    entrypoint = next(args for word, args in _instructions(OPERATOR_DOCKERFILE) if word == "ENTRYPOINT")
    assert entrypoint == '["python", "-m", "sftjob_operator", "--liveness=http://0.0.0.0:8080/healthz"]'
    assert not [word for word, _ in _instructions(OPERATOR_DOCKERFILE) if word == "CMD"]
    # The flag the entrypoint passes is one the module accepts; settings come from the environment.
    done = subprocess.run([sys.executable, "-m", "sftjob_operator", "--help"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0 and "--liveness URL" in done.stdout
