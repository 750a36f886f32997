# The leveranse image: Airflow 3.3 with the Celery provider and the leveranse package, installed
# with the pinned versions of constraints.txt, so every container runs what the tests ran.
#
# The package is installed editable from /opt/leveranse because it reads sql/ beside etl/ and,
# by default, the specs in registers/; docker-compose.yml mounts dags/ and registers/ over
# the copies baked in here, so a spec or DAG change needs no rebuild.
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    AIRFLOW_HOME=/opt/airflow

RUN useradd --create-home --home-dir /opt/airflow --uid 50000 --gid 0 airflow

WORKDIR /opt/leveranse
COPY pyproject.toml constraints.txt ./
COPY etl ./etl
COPY sql ./sql
COPY registers ./registers
COPY dags ./dags
# Group 0 may write what Airflow writes, so the containers can run as the host user that
# owns the drop folder (docker-compose.yml: user "${AIRFLOW_UID}:0").
RUN pip install -c constraints.txt -e . \
    && mkdir -p /opt/airflow/logs /opt/airflow/auth \
    && chown -R airflow:0 /opt/leveranse /opt/airflow \
    && chmod -R g+rwX /opt/leveranse /opt/airflow

USER airflow
