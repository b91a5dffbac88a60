"""`churnml run`: the main job on embedded defaults, from simulation to the running service."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from churnml.cli.common import app, console, load_settings, read_spec, repo_config, validated_data
from churnml.cli.data import simulate_command, write_features, write_labels
from churnml.cli.scoring import score_and_write
from churnml.cli.serving import serve_command
from churnml.cli.training import promote_command, train_on_spec, train_setup


@app.command("run")
def run_command(
    customers: Annotated[int, typer.Option(min=1)] = 2_000,
    months: Annotated[int, typer.Option(min=3, max=120)] = 18,
    seed: Annotated[int, typer.Option()] = 0,
    trials: Annotated[
        int | None, typer.Option(min=1, help="Optuna trials (default: training/config.yaml).")
    ] = None,
    serve: Annotated[bool, typer.Option(help="Start the prediction service and pages at the end.")] = True,
    port: Annotated[int, typer.Option(min=1, max=65535)] = 3000,
) -> None:
    """The main job on embedded defaults: simulate -> validate -> labels -> features -> train -> promote ->
    batch score -> serve (BentoML, with the CSM pages) until Ctrl-C."""
    settings = load_settings()
    data_dir = settings.data_dir / "simulated"
    spec = data_dir / "spec.yaml"
    simulate_command(out=data_dir, customers=customers, months=months, seed=seed)
    setup = train_setup(repo_config(), trials, None)
    loaded = read_spec(spec, None)
    with validated_data(loaded, settings) as tables:  # validated once, for every stage below
        write_labels(tables, loaded, settings.data_dir / "labels" / "simulated.parquet")
        table, fs = write_features(tables, loaded, settings.data_dir / "features" / "simulated.parquet")
        train_on_spec(setup, loaded, table, fs, None)
        promote_command(metric=None, margin=None, config=repo_config())
        score_and_write(tables, loaded, settings, None, None, None)
    if serve:
        console.print(
            f"try: curl -s -X POST http://127.0.0.1:{port}/explain -H 'Content-Type: application/json' "
            """-d '{"customers": [{"customer_id": "demo", "events": [{"timestamp": "2025-06-01T10:00:00", """
            """"event_type": "login"}], "profile": {"plan": "starter", "segment": "SMB", "mrr": 99}}]}'""",
            highlight=False,
        )
        serve_command(port=port, host="127.0.0.1", model_tag=None, workers=1)


def main() -> None:  # pragma: no cover - console entry point
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
