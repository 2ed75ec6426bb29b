"""earshot: live speech-to-text for telephony and Nextcloud Talk.

Layers, from the bottom (checked by import-linter, see pyproject.toml):

* ``earshot.audio`` and ``earshot.events``: pure data and DSP, no I/O, no asyncio.
* ``earshot.settings`` and ``earshot.metrics``: the process's configuration and its Prometheus metrics.
* ``earshot.engines`` and ``earshot.storage``: recognisers and the partial/segment stores.
* ``earshot.gateways``: the network edges (one subpackage per gateway; they never import each other).
* ``earshot.cli``: the ``earshot`` command.
"""

__version__ = "0.1.0"
