"""The token service: callers' identities, authorization, minting, issuer documents."""
