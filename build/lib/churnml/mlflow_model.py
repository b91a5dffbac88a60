"""MLflow "model from code" entry: defines the pyfunc without pickling any Python object.

MLflow copies this file into the logged model and runs it on load; the weights themselves are the
LightGBM text and JSON files in the model's ``churn_model`` artifact.
"""

import mlflow

from churnml.registry import ChurnPyfunc

mlflow.models.set_model(ChurnPyfunc())
