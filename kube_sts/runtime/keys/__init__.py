"""Signing keys: the key-set format, rotation decisions and the manager that keeps the Secret."""
