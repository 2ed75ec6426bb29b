"""The telephony gateway: G.711 or PCM16 over a WebSocket in, partial and final JSON out.

Speaks PROTOCOLS.md §1 exactly, so clients of the older telephony server work unchanged.
"""
