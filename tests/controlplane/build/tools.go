//go:build tools

// Package controlplane only pins the kube-apiserver command for `go build`.
package controlplane

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
