"""kube-sts: a Kubernetes Security Token Service.

Subpackages: ``compiler`` (sts-compile), ``runtime`` (token service, issuer documents, admission
webhook, sidecar), ``templates`` and ``schemas`` (data shipped with the wheel).
"""

__version__ = "0.1.0"
