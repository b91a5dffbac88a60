"""Pins: the full lock (tests and tools) and the bento's runtime lock agree, and the image gets no test tools."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEV_TOOLS = {"pytest", "ruff", "hypothesis", "schemathesis", "playwright", "pip-audit", "pyspark"}


def _name(requirement: str) -> str:
    return re.split(r"[=<>\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pins(path: Path) -> dict[str, str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return {_name(line): line.split("==", 1)[1] for line in lines if line and not line.startswith("#")}


def test_the_bento_installs_the_runtime_lock_pinned_like_the_full_lock() -> None:
    full, runtime = _pins(ROOT / "requirements.lock"), _pins(ROOT / "serving" / "requirements.lock")
    assert {name: full.get(name) for name in runtime} == runtime  # same versions, nothing unpinned
    assert not DEV_TOOLS & set(runtime), sorted(DEV_TOOLS & set(runtime))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for requirement in project["dependencies"]:  # every direct dependency, at its pinned version
        assert runtime.get(_name(requirement)) == requirement.split("==", 1)[1].split()[0], requirement
    for requirement in project["optional-dependencies"]["dev"]:
        assert full.get(_name(requirement)) == requirement.split("==", 1)[1], requirement
    bentofile = yaml.safe_load((ROOT / "serving" / "bentofile.yaml").read_text(encoding="utf-8"))
    assert bentofile["python"]["requirements_txt"] == "serving/requirements.lock"


def test_the_install_declares_its_licence_as_setuptools_reads_it_without_warnings() -> None:
    """setuptools 77+ warns at every install ("`project.license` as a TOML table is deprecated") unless
    the licence is an SPDX string; the build backend is pinned at a version that reads one."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert isinstance(pyproject["project"]["license"], str)
    assert not any(c.startswith("License ::") for c in pyproject["project"].get("classifiers", []))
    (backend,) = [r for r in pyproject["build-system"]["requires"] if _name(r) == "setuptools"]
    major = int(backend.split("==", 1)[1].split(".")[0])
    assert major >= 77, backend
