# One image for `skiplock migrate`, `skiplock worker` and (later) `skiplock api`.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
RUN useradd --create-home --uid 10001 skiplock
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER skiplock
WORKDIR /home/skiplock
ENTRYPOINT ["skiplock"]
CMD ["--help"]
