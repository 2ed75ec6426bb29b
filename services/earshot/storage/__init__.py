"""Where transcripts are kept: partials (memory or Redis) and segments (SQLite or MySQL).

May use: ``earshot.events`` and ``earshot.settings``. Must not use: engines or gateways.
The ports are in :mod:`earshot.storage.ports`; backends are chosen by URL scheme in
:mod:`earshot.storage.backends`.
"""
