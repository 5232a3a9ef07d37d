"""Relying-party trust documents generated from the values file (``sts-compile trust``).

One module per relying party (``aws``, ``azure``, ``gcp``, ``vault``); ``subjects`` turns an
endpoint's rules and ``sub`` template into the subjects a relying party must trust. Every
generator reads the endpoint's audience, algorithm, issuer and subject from the validated model.
"""
