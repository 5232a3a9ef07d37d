"""Jinja2 templates, one Kubernetes object per file."""
