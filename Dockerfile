# The kube-sts runtime image: the token service and admission webhook (kube-sts-server) and the
# sidecar (kube-sts-sidecar). Build: docker build -t ghcr.io/kube-sts/kube-sts:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kube_sts ./kube_sts
COPY compiler ./compiler
COPY runtime ./runtime
COPY templates ./templates
COPY schemas ./schemas
# kube_sts/ holds symlinks to the folders above; a wheel resolves them into real files.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[server]"

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
# The compiler's template engine and YAML emitter (jinja2, ruamel.yaml) are not runtime
# dependencies: they leave the image, and the import check proves the runtime does without them.
RUN pip install --no-cache-dir --no-index --find-links /wheels "kube-sts[server]" \
    && pip uninstall --yes jinja2 markupsafe ruamel.yaml ruamel.yaml.clib \
    && python -c "import kube_sts.runtime.server, kube_sts.runtime.sidecar" \
    && rm -rf /wheels \
    && groupadd --system --gid 65532 nonroot \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin nonroot \
    && command -v kube-sts-server kube-sts-sidecar
USER 65532:65532
EXPOSE 8443
ENTRYPOINT []
CMD ["kube-sts-server", "--config", "/etc/kube-sts/config.json"]
