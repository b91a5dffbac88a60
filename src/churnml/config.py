"""Runtime settings: paths and engine limits, read from the environment when asked (never at import)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Settings", "repo_root", "shared_data_dir"]


def repo_root() -> Path:
    """The checkout this package runs from (src/churnml/config.py -> repo)."""
    return Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """Where the public churn datasets live: $CHURNML_SHARED_DATA or ../shared/data beside the repo."""
    env = os.environ.get("CHURNML_SHARED_DATA")
    return Path(env) if env else repo_root().parent / "shared" / "data"


@dataclass(frozen=True)
class Settings:
    """Everything environment-dependent in one place; build with :meth:`from_env`."""

    home: Path = field(default_factory=lambda: Path.cwd())
    duckdb_memory_limit: str = "6GB"
    duckdb_threads: int = max(1, os.cpu_count() or 1)

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def temp_dir(self) -> Path:
        return self.home / "data" / ".duckdb_tmp"

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            home=Path(env.get("CHURNML_HOME", Path.cwd())).resolve(),
            duckdb_memory_limit=env.get("CHURNML_DUCKDB_MEMORY_LIMIT", "6GB"),
            duckdb_threads=int(env.get("CHURNML_DUCKDB_THREADS", max(1, os.cpu_count() or 1))),
        )
