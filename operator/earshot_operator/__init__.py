"""earshot's control plane: a kopf operator for TranscriptionSession and TalkRoom resources.

Must not import the data plane (``earshot``): it only builds and applies Kubernetes objects.

Pure modules (data and functions, no I/O, no asyncio): ``resources`` (names of the CRDs and
labels), ``dataplane`` (commands, env names and paths the gateway containers expect),
``settings`` (the one settings object, read from the environment once), ``specs`` (typed views
of resource bodies), ``gateways`` (what to run for a resource), ``manifests`` (Kubernetes
objects), ``statuses`` (phases and conditions). Modules that do I/O: ``clients`` (the API),
``reconciling`` (apply and status), ``metrics`` (Prometheus), ``handlers`` (thin kopf
handlers) and ``running`` (the process).
"""
