# One image for every role: `skiplock migrate`, `skiplock worker --app …` and
# `skiplock api --host 0.0.0.0`. The builder turns the project into a wheel;
# the runtime stage installs the dependencies of `skiplock[cli]` exactly as
# pinned (with their hashes) in requirements/cli.lock, then that wheel.

FROM python:3.12-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/cli.lock ./requirements/
COPY src ./src
# --no-deps: only the project's own wheel; the runtime installs its
# dependencies from the lock file.
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && cp requirements/cli.lock /wheels/

FROM python:3.12-slim AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed, numeric UID/GID so volume ownership and Kubernetes
# runAsNonRoot/runAsUser checks do not depend on /etc/passwd.
RUN groupadd --system --gid 10001 skiplock \
    && useradd --system --uid 10001 --gid skiplock --create-home \
       --home-dir /home/skiplock --shell /usr/sbin/nologin skiplock
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --require-hashes -r /wheels/cli.lock \
    && pip install --no-deps /wheels/*.whl
USER 10001:10001
WORKDIR /home/skiplock
EXPOSE 8000
ENTRYPOINT ["skiplock"]
CMD ["--help"]
