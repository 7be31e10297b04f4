# One image for the broker and the operator:
#   docker run shazamq/shazamq                       -> a broker on the embedded defaults
#   docker run shazamq/shazamq --config /etc/shazamq/config.toml
#   docker run --entrypoint python shazamq/shazamq -m shazamq.operator
FROM python:3.11-slim AS build
# A C compiler for the optional extension (shazamq/protocol/_recordwalk.c, the record walk
# of produce validation); the build falls back to pure Python without it. Only this stage
# has it: the wheel it builds is installed in the image below.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY shazamq ./shazamq
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[operator]'

FROM python:3.11-slim
RUN useradd --system --uid 1000 --home-dir /var/lib/shazamq shazamq \
    && mkdir -p /data/shazamq /etc/shazamq && chown shazamq /data/shazamq
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 1000
ENV SHAZAMQ_BROKER__DATA_DIR=/data/shazamq
VOLUME /data/shazamq
EXPOSE 9092 9090
ENTRYPOINT ["python", "-m", "shazamq.broker"]
