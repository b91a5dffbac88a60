# The churnml service: the runtime lock (no test tools), then the package itself.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY serving/requirements.lock serving/requirements.lock
RUN pip install --no-cache-dir -r serving/requirements.lock
COPY pyproject.toml README.md ./
COPY src src
RUN pip install --no-cache-dir --no-deps . && useradd --create-home churnml && mkdir -p /var/lib/churnml \
    && chown churnml /var/lib/churnml
USER churnml
EXPOSE 3000
