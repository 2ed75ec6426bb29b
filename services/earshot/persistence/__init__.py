"""Durable hand-off from the gateways to the stores: the local spool and the draining of it.

A gateway appends its session openings, partials and finals to a spool on local disk
(:mod:`earshot.persistence.spool`); a drainer (:mod:`earshot.persistence.draining`) writes them to
the partial and segment stores in batches and acknowledges them once stored. The drainer runs either
in the gateway's process (the embedded default) or as the ``earshot persister`` sidecar
(:mod:`earshot.persistence.sidecar`): one code path.

May use: ``earshot.storage``, ``earshot.events``, ``earshot.settings``, ``earshot.metrics``.
Must not use: engines, gateways or the CLI (gateways use this package, not the other way).
"""
