"""Pure audio code: G.711 and PCM16 decoding, stateful resampling, framing.

No I/O, no asyncio, no settings: values in, values out.
"""
