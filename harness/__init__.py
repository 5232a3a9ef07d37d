"""Test and benchmark support, shared by ``tests/`` and ``bench/`` and never shipped.

The wheel (``[tool.setuptools.packages.find]`` includes ``kube_sts*`` only) and the runtime image
(the Dockerfile copies ``kube_sts/`` only) do not contain it. One concept per module:

- ``apiserver``: the HTTP double of the Kubernetes API server, kept for faults and request logs
- ``runtime``: runtime configs, key sets, a throw-away CA, the ``App`` in-process or on uvicorn
- ``attacks``: ``kube-sts-server`` as a process and the hostile clients that attack it
- ``reviews``: the seed's example Pod and the AdmissionReview around it
- ``token_service``: a double of the token route for the sidecar as a process

It imports ``kube_sts`` and never ``tests`` or ``bench`` (``lint-imports``).
"""
