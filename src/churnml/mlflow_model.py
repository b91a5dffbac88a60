"""MLflow "model from code" entry: defines the pyfunc without pickling any Python object.

MLflow copies this file into the logged model and runs it on load; the weights themselves are the
LightGBM text and JSON files in the model's ``churn_model`` artifact. The model also carries the
churnml package (``code_paths``) and its pinned requirements, so it loads where churnml is not
installed (``mlflow models serve``, a Docker image built by MLflow). Only :mod:`churnml.model` is
imported: the same feature encoding and calibration as training and serving.
"""

from pathlib import Path

import mlflow
import pandas as pd

from churnml.model import ChurnModel


class ChurnPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc face of :class:`ChurnModel`: feature rows in, calibrated probability out."""

    def load_context(self, context) -> None:  # noqa: ANN001
        self.model = ChurnModel.load(Path(context.artifacts["churn_model"]))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:  # noqa: ANN001, ARG002
        return pd.DataFrame({"churn_probability": self.model.predict_proba(model_input)})


mlflow.models.set_model(ChurnPyfunc())
