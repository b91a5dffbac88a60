# The MLflow tracking server with the drivers it needs here: psycopg for PostgreSQL, boto3 for S3.
# Versions as in ../requirements.lock.
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow==3.17.2" "psycopg[binary]==3.3.9" "boto3==1.44.18"
EXPOSE 5000
