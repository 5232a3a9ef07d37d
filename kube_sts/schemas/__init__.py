"""JSON Schemas generated from the models (see ``sts-compile --schema``)."""
