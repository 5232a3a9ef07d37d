"""Serving TLS: certificate decisions and the manager that keeps the TLS Secret."""
