"""earshot's control plane: a kopf operator for TranscriptionSession and TalkRoom resources.

Must not import the data plane (``earshot``): it only builds and applies Kubernetes objects.
"""
