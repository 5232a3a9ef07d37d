"""Kubernetes API access: typed errors, reads and writes of the objects the runtime owns."""
