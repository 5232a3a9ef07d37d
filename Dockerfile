# The kube-sts runtime image: the token service and admission webhook (kube-sts-server) and the
# sidecar (kube-sts-sidecar).
#
# Reproducible inputs only: the base image by digest, every Python package from a lock file of
# exact versions with hashes, installed without dependency resolution. Build:
#
#   docker buildx imagetools inspect python:3.11-slim-bookworm      # note the index "Digest:"
#   docker build --build-arg PYTHON_DIGEST=sha256:<digest> -t ghcr.io/kube-sts/kube-sts:0.1.0 .
#
# PYTHON_DIGEST has no default on purpose: a tag moves, and the build fails rather than take
# whatever the tag points to today. Record the digest you build with next to the release.
ARG PYTHON_DIGEST
FROM python:3.11-slim-bookworm@${PYTHON_DIGEST} AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The locks: requirements/runtime.lock (what the image runs) and requirements/build.lock (the
# build backend); regenerate them with the pip-compile command at the top of each.
COPY requirements/runtime.lock requirements/build.lock ./requirements/
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes --no-deps --only-binary :all: -r requirements/build.lock \
    && python -m venv /opt/kube-sts \
    && /opt/kube-sts/bin/pip install --require-hashes --no-deps --only-binary :all: -r requirements/runtime.lock
COPY pyproject.toml README.md ./
COPY kube_sts ./kube_sts
# The wheel is built from this source tree with the locked setuptools (no build isolation, nothing fetched)
# and installed without dependencies: the compiler's jinja2 and ruamel.yaml never enter the image.
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
    && /opt/kube-sts/bin/pip install --no-deps --no-index /wheels/kube_sts-*.whl \
    && /opt/kube-sts/bin/pip uninstall --yes pip setuptools \
    && /opt/kube-sts/bin/python -c "import kube_sts.runtime.server, kube_sts.runtime.sidecar"

FROM python:3.11-slim-bookworm@${PYTHON_DIGEST}
# The user 65532 and the CMD are kube_sts/runtime/config.py's RUN_AS_UID and SERVER_COMMAND, which
# the manifests render; tests/e2e/test_image.py checks that these literals stay equal to them.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/kube-sts/bin:$PATH
# The base image's pip, setuptools and wheel are never run by the runtime: remove them.
RUN /usr/local/bin/python -m pip uninstall --yes pip setuptools wheel \
    && rm -f /usr/local/bin/pip /usr/local/bin/pip3 /usr/local/bin/pip3.11 /usr/local/bin/wheel \
    && groupadd --system --gid 65532 nonroot \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin nonroot
COPY --from=build /opt/kube-sts /opt/kube-sts
RUN for python in /usr/local/bin/python /opt/kube-sts/bin/python; do \
        "$python" -c "import importlib.util as u, sys; sys.exit([m for m in ('pip', 'setuptools', 'wheel', 'jinja2', 'ruamel') if u.find_spec(m)])" \
        || exit 1; \
    done \
    && python -c "import kube_sts.runtime.server, kube_sts.runtime.sidecar" \
    && command -v kube-sts-server kube-sts-sidecar
USER 65532:65532
EXPOSE 8443
ENTRYPOINT []
CMD ["kube-sts-server", "--config", "/etc/kube-sts/config.json"]
