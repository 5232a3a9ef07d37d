"""HTTP: the ASGI app's routes, requests and responses, limits, request metrics and the transport."""
