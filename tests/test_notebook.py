"""notebooks/walkthrough.ipynb runs top to bottom against the current package.

No Jupyter kernel is installed (nbclient is not a dependency), so the code cells run in order in one
namespace, the way a kernel would: a cell's last expression is its displayed output, which the test
checks like a reader would.
"""

from __future__ import annotations

import ast
import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


def code_cells(path: Path) -> list[str]:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    assert notebook["nbformat"] == 4
    return ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]


def run_cell(source: str, namespace: dict[str, Any], name: str) -> Any:
    """Execute a cell; return the value of its last expression (what Jupyter would display), else None."""
    tree = ast.parse(source, filename=name)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, name, "exec"), namespace)  # noqa: S102 - the notebook is our own code
    if last is None:
        return None
    return eval(compile(ast.Expression(last.value), name, "eval"), namespace)  # noqa: S307


def test_notebook_is_stored_without_outputs() -> None:
    """Outputs would make every re-run a diff; readers run it (it takes well under a minute)."""
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)


@pytest.mark.slow
def test_walkthrough_runs_and_shows_the_key_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the notebook's WORK folder lands in tmp_path
    for var in ("MLFLOW_TRACKING_URI", "CHURNML_HOME"):
        monkeypatch.delenv(var, raising=False)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    outputs = []
    try:
        for i, source in enumerate(code_cells(NOTEBOOK)):
            outputs.append(run_cell(source, namespace, f"walkthrough.ipynb[cell {i}]"))
    finally:
        mlflow.set_tracking_uri(None)  # never leak the notebook's store into other tests
        if "con" in namespace:
            namespace["con"].close()

    work = namespace["WORK"]
    assert work.parent == tmp_path and (work / "mlflow.db").is_file()  # everything under the temp folder
    assert namespace["summary"].churners > 0

    metrics = next(o for o in outputs if isinstance(o, pd.DataFrame) and "model" in o.columns)
    assert {"model", "base_rate", "logistic_regression"} <= set(metrics.columns)
    assert 0.5 < metrics.loc["roc_auc", "model"] <= 1

    run_id, version = namespace["run_id"], namespace["version"]
    assert namespace["run"].info.status == "FINISHED" and version == "1"
    assert namespace["challenger"].run_id == run_id
    assert {"feature_catalogue.csv", "plots", "evaluation"} <= set(namespace["artifacts"])
    assert "test_pr_auc" in namespace["metrics"]

    reasons = outputs[-2]
    assert isinstance(reasons, pd.DataFrame) and 1 <= len(reasons) <= 5  # one per reason group at most
    assert reasons["reason"].str.len().gt(10).all() and reasons["contribution"].gt(0).all()
    assert reasons["compared with accounts that stayed"].str.contains("accounts that stayed").all()
