"""A real single-node Kubernetes (kubelet, containerd, CNI, Service DNS), its images, and the
SRE-path tests.

``images`` builds the chart's images with buildah; ``harness`` starts the cluster in a private
network namespace (``netns``) with Service-name DNS (``dns``); conftest.py gives tests one cluster
per session.
"""
