"""The custom resources the operator serves, and the labels and names it stamps: pure data.

Names here must match ``crds/`` (group, version, plurals, kinds).
"""

from __future__ import annotations

import dataclasses
from typing import Final

GROUP: Final = "earshot.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "earshot-operator"
NAME_LABEL: Final = "app.kubernetes.io/name"
INSTANCE_LABEL: Final = "app.kubernetes.io/instance"
COMPONENT_LABEL: Final = "app.kubernetes.io/component"
KIND_LABEL: Final = "earshot.dev/kind"
#: The Helm release whose operator made an object: a release's PodMonitor selects only its own
#: gateway pods by it (``app.kubernetes.io/instance`` names the gateway, not the release).
RELEASE_LABEL: Final = "earshot.dev/release"
CONFIG_HASH_ANNOTATION: Final = "earshot.dev/config-hash"


@dataclasses.dataclass(frozen=True)
class Kind:
    """One custom resource kind and the prefix of the objects made for it."""

    kind: str
    plural: str
    short: str
    component: str


SESSION: Final = Kind("TranscriptionSession", "transcriptionsessions", "tsess", "g711-gateway")
ROOM: Final = Kind("TalkRoom", "talkrooms", "troom", "talk-gateway")
KINDS: Final = {SESSION.kind: SESSION, ROOM.kind: ROOM}
