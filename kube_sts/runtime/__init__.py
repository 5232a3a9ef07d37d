"""The code inside the kube-sts image. Never imports the compiler."""
