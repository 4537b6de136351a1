# The signalling service: the same Python package `./dev setup` installs, without the
# embedded helpers (Kurento, coturn and Redis run as their own containers in compose/).
# /recordings is created here, owned by the service's user, so that the compose volume
# mounted on it starts with that owner (Kurento, running as root, writes into it too).
FROM python:3.11-slim-bookworm

# ffmpeg/ffprobe verify and compose recordings.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ffmpeg curl \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --system --uid 10001 --home-dir /srv/telemed --create-home telemed \
 && mkdir /recordings && chown telemed:telemed /recordings
WORKDIR /src
COPY pyproject.toml README.md ./
COPY telemed ./telemed
COPY cluster ./cluster
COPY mis ./mis
COPY signaling ./signaling
COPY kurento_ctl ./kurento_ctl
COPY mediaserver ./mediaserver
COPY turn ./turn
COPY web ./web
COPY recordings ./recordings
RUN pip install --no-cache-dir .

USER telemed
WORKDIR /srv/telemed
ENV TELEMED_DATA_DIR=/srv/telemed/var \
    TELEMED_HTTP_HOST=0.0.0.0 \
    TELEMED_HTTP_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
CMD ["telemed", "run"]
