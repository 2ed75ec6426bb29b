"""Exponential backoff with jitter for reconnecting to the signaling server (pure)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays that double from ``initial`` up to ``maximum``, each jittered down by up to 25%.

    Jitter keeps many gateways that lost the same server from coming back in lockstep.
    """

    initial: float
    maximum: float
    factor: float = 2.0
    _attempt: int = field(default=0, init=False)
    _random: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds."""
        ceiling = min(self.maximum, self.initial * self.factor**self._attempt)
        self._attempt += 1
        return ceiling * (0.75 + 0.25 * self._random.random())

    def reset(self) -> None:
        """Start again from ``initial`` (after a success)."""
        self._attempt = 0
