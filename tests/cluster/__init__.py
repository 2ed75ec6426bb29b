"""A real single-node Kubernetes (kubelet, containerd, CNI, Service DNS) and the SRE-path tests.

``harness`` starts the cluster in a private network namespace (``netns``) with Service-name DNS
(``dns``); conftest.py gives tests one cluster per session.
"""
