-- The databases beside MLflow's (created by POSTGRES_DB): the Optuna studies and the CSM store.
CREATE DATABASE optuna OWNER churnml;
CREATE DATABASE csm OWNER churnml;
