# The broker image used by docker-compose.yml (production profile).
# An exact version, never a floating tag; add its digest where the registry can be reached
# (`docker buildx imagetools inspect python:3.11.17-slim-bookworm`): docs/operators.md.
FROM python:3.11.17-slim-bookworm
# The non-root user, and the folders compose mounts named volumes on (broker keys, beat's
# schedule): an empty named volume takes the owner and mode of the folder it is mounted on,
# so they must exist here, owned by the user, or the user cannot write to its volumes.
RUN useradd --create-home --uid 10001 broker \
    && install -d -o broker -g broker -m 0700 /var/lib/broker /var/lib/broker/keys /var/lib/beat
WORKDIR /app
COPY pyproject.toml README.md ./
COPY broker ./broker
RUN pip install --no-cache-dir '.[server]'
USER broker
# Compose secrets are files; pydantic-settings reads them from here.
ENV BROKER_SECRETS_DIR=/run/secrets
EXPOSE 8000
CMD ["broker", "serve", "--host", "0.0.0.0"]
