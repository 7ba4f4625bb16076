# The budget-router images: built with EXTRAS="" it is the lean router (`serve` only: no Envoy binary,
# tokenizer, numpy or matplotlib); with EXTRAS=emulator it also runs the vLLM emulator (`emulate`).
#
# Works where no image registry is reachable: BASE_IMAGE can be any local image with python3 (>= 3.11),
# its venv module and the ca-certificates bundle (e.g. a debootstrap'ed Debian bookworm with
# python3-venv and ca-certificates). Behind a TLS-intercepting proxy, put the proxy's CA certificates
# (*.crt, PEM) into EXTRA_CA_DIR (default deploy/ca-certificates/) so pip and the app trust them.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ARG EXTRA_CA_DIR=deploy/ca-certificates
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG EXTRAS=
# deploy/compose-up removes dangling images with this label after a failed build.
LABEL io.budget-router.image=app

# Extra CAs join the system bundle before pip runs; pip and Python then use that bundle. A build that
# still fails with CERTIFICATE_VERIFY_FAILED needs the proxy's CA in deploy/ca-certificates/.
COPY ${EXTRA_CA_DIR}/ /usr/local/share/ca-certificates/budget-router-extra/
COPY deploy/trust-extra-cas.sh /usr/local/bin/
RUN trust-extra-cas.sh /usr/local/share/ca-certificates/budget-router-extra
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY extproc ./extproc
RUN set -eu; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --no-compile \
      ${PIP_INDEX_URL:+--index-url "$PIP_INDEX_URL"} ${PIP_EXTRA_INDEX_URL:+--extra-index-url "$PIP_EXTRA_INDEX_URL"} ".${EXTRAS:+[$EXTRAS]}" ; \
    # xds-protos ships its own, older copy of opentelemetry/proto/*; whichever package pip unpacks
    # last wins, and the old copy breaks the OTLP exporter. Put OpenTelemetry's own files back.
    otel_proto="$(/opt/venv/bin/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"; \
    /opt/venv/bin/pip install --no-deps --force-reinstall "opentelemetry-proto==${otel_proto}" \
      ${PIP_INDEX_URL:+--index-url "$PIP_INDEX_URL"}; \
    /opt/venv/bin/python -c 'from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter'; \
    /opt/venv/bin/budget-router --version

# Unprivileged user. Learned calibration persists where compose mounts a named volume; no VOLUME here,
# so containers that never write state (the emulators) leave no anonymous volumes behind.
RUN useradd --system --uid 10001 --home-dir /var/lib/budget-router --shell /usr/sbin/nologin budget \
 && mkdir -p /var/lib/budget-router && chown budget /var/lib/budget-router
ENV BUDGET_ROUTER_CALIBRATION_STATE_FILE=/var/lib/budget-router/calibration.json
USER budget
WORKDIR /var/lib/budget-router
EXPOSE 9002 9464 8000
ENTRYPOINT ["budget-router"]
CMD ["serve", "--server-listen=0.0.0.0:9002"]
