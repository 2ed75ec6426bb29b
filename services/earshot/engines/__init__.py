"""Recognisers: one protocol (:mod:`earshot.engines.recognizers`), several implementations.

May use: ``earshot.audio``, ``earshot.events``, ``earshot.settings``, ``earshot.metrics``.
Must not use: storage or gateways. CPU-bound inference never runs on the event loop.
"""
