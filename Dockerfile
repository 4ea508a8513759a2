# trio-sfu: one process = one pod = one core (docs/DESIGN.md). Kubernetes manifests that run
# this image in cluster mode are in deploy/kubernetes/; docs/cluster.md explains them.
#
#   docker build -t trio-sfu .
#   docker run --rm -p 8080:8080 -p 7882:7882/udp -e TRIO_SFU_PUBLIC_IP=<this host's IP> trio-sfu
#
# Inside a container the process sees only the container's addresses; --public-ip
# (TRIO_SFU_PUBLIC_IP) must name the address clients send media to, and the UDP port must be
# published on the same number (ICE candidates carry the port the process binds).
# Any image with Python >= 3.11 and its venv module; scripts/build-image builds one without a
# registry (a Debian bookworm root bootstrapped with mmdebstrap) and passes it here.
ARG BASE=python:3.11-slim
# The build stage: the same Python plus a C compiler and the Python headers, for the forwarding
# path compiled with mypyc (COMPILE=1, the default; trio_sfu/compiled.py, docs/architecture.md
# "Compiled, optionally"). What it lacks comes from apt: gcc on python:3.11-slim (which has
# the headers), gcc and python3-dev on a Debian root with Debian's python3 (scripts/build-image).
ARG BUILD_BASE=${BASE}

FROM ${BUILD_BASE} AS build
# 1: the 26 per-packet modules compiled (25 % fewer instructions per forwarded packet, 26 %
# fewer per packet taken in, 72 % fewer in the bandwidth estimator; docs/benchmarks.md);
# 0: pure Python, as `pip install .`.
ARG COMPILE=1
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Every binary dependency ships a manylinux wheel; the versions are the tested ones
# (constraints.txt); the demo site goes into the package (setup.py copies site/ to
# trio_sfu/site), so nothing is served from outside it.
WORKDIR /app
# .image-wheels (optional): wheels scripts/build-image collected on the host, for builds
# without a package index (the glob lets the COPY succeed when it is absent).
COPY pyproject.toml setup.py MANIFEST.in constraints.txt README.md .image-wheel[s] ./
COPY trio_sfu ./trio_sfu
COPY site ./site
# In a venv: Debian's own python3 refuses system-wide pip installs (PEP 668). Compiled, mypyc
# runs in a throw-away venv of its own (it type-checks the modules against the installed
# dependencies) and builds a wheel; the image's venv gets that wheel and no build tools.
RUN set -eu; \
    offline=""; if [ -d .image-wheels ] || ls *.whl >/dev/null 2>&1; then \
        mkdir -p .image-wheels && mv *.whl .image-wheels/ 2>/dev/null || true; \
        offline="--no-index --find-links .image-wheels"; fi; \
    python3 -m venv /opt/trio-sfu; \
    if [ "$COMPILE" = 1 ]; then \
        need=""; command -v gcc >/dev/null || need="gcc libc6-dev"; \
        python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join( \
            sysconfig.get_paths()["include"], "Python.h")))' || need="$need python3-dev"; \
        if [ -n "$need" ]; then apt-get update -qq \
            && apt-get install -qq -y --no-install-recommends $need >/dev/null \
            && rm -rf /var/lib/apt/lists/*; fi; \
        python3 -m venv /opt/build; \
        /opt/build/bin/pip install $offline -c constraints.txt . mypy wheel "setuptools>=68"; \
        TRIO_SFU_COMPILE=1 /opt/build/bin/pip wheel $offline --no-build-isolation --no-deps \
            -w /app/dist .; \
        /opt/trio-sfu/bin/pip install $offline -c constraints.txt /app/dist/trio_sfu-*.whl; \
    else \
        /opt/trio-sfu/bin/pip install $offline -c constraints.txt .; \
    fi; \
    cd / && /opt/trio-sfu/bin/python -c "from trio_sfu.compiled import COMPILED_MODULES as m, \
compiled_modules as c; n = len(c()); print('trio-sfu: compiled_modules=%d' % n); \
raise SystemExit(n != (len(m) if '$COMPILE' == '1' else 0))"

FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The venv's interpreter is the base's python3, the same in both stages.
COPY --from=build /opt/trio-sfu /opt/trio-sfu
ENV PATH=/opt/trio-sfu/bin:$PATH

RUN groupadd --system --gid 10001 sfu \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin sfu
USER 10001:10001

ENV TRIO_SFU_HTTP_PORT=8080 \
    TRIO_SFU_UDP_PORT=7882
# HTTP: signaling, WHIP/WHEP, /healthz, /readyz, /metrics, the demo site.
EXPOSE 8080/tcp
# The one UDP port for all media (ICE, DTLS, SRTP), and the same number over TCP for ICE-TCP
# (clients whose network drops UDP; --tcp-port, default "same").
EXPOSE 7882/udp
EXPOSE 7882/tcp

# SIGTERM drains (no new sessions, RECONNECT to clients, exit when empty or after
# --drain-timeout); SIGINT stops at once.
STOPSIGNAL SIGTERM
# No curl in the slim image: the interpreter does the request (a non-2xx answer raises).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", \
         "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('TRIO_SFU_HTTP_PORT') or '8080'), timeout=2)"]

CMD ["trio-sfu", "serve"]
