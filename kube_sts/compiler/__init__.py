"""The sts-compile compiler: values file in, Kubernetes manifests out."""
