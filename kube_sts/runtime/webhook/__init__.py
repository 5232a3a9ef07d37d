"""The admission webhook: the review route and the Pod injection it applies."""
