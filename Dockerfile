# The broker image used by docker-compose.yml (production profile).
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 broker
WORKDIR /app
COPY pyproject.toml README.md ./
COPY broker ./broker
RUN pip install --no-cache-dir '.[server]'
USER broker
# Compose secrets are files; pydantic-settings reads them from here.
ENV BROKER_SECRETS_DIR=/run/secrets
EXPOSE 8000
CMD ["broker", "serve", "--host", "0.0.0.0"]
