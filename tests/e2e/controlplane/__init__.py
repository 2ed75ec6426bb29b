"""A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager.

``build.sh`` builds the Kubernetes binaries once (DESIGN.md, "Kubernetes API") and caches them;
``cluster`` starts the three servers on loopback with generated certificates and applies crds/;
``operators`` runs the earshot operator as a process with a least-privilege token.
"""
