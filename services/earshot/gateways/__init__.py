"""Network edges of the data plane, one subpackage per gateway.

May use engines, storage, settings, metrics, audio and events. Gateways never import each other.
"""
