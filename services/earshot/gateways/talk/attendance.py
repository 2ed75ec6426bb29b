"""A room gateway's attendance: be in its call exactly when its TalkRoom asks, and say so.

The operator runs one gateway per TalkRoom. :class:`Attendance` follows that TalkRoom (who wants
captions, in which language, whether active), joins the call through the HPB when somebody wants
captions, turns targets on and off as they change, leaves when the TalkRoom is set inactive, and
notices when the room leaves by itself (the call ended, nobody wanted captions for the grace period,
signaling lost). It reports one :class:`Report` (Joining, InCall with N speakers, Idle, Left,
Failed with the signaling error) into ``status.room``, the ``InCall`` condition and Events, and
readiness comes from it: ready while joined.

After the room left by itself, only a caption target that was not there before makes it join again:
a call that ended must not be re-joined because Talk did not opt its participants out.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from earshot.gateways.talk.backoff import Backoff
from earshot.gateways.talk.configuration import TalkSettings
from earshot.gateways.talk.hosting import AdmissionRefused, Rooms, UnsupportedLanguage
from earshot.gateways.talk.kubeapi import ClusterError
from earshot.gateways.talk.ownroom import OwnTalkRoom, TalkRoomGone, Wish, now
from earshot.gateways.talk.signaling import SignalingRefused, SignalingUnavailable

log = logging.getLogger(__name__)

#: The condition a room gateway owns in its TalkRoom's status (the operator owns the others).
CONDITION = "InCall"
_SIGNALING_LOST = "signaling lost"
# Rooms.leave (our own leaving) closes a room with no reason, or "closed".
_OWN_LEAVE = ("", "closed")


# On the way out: how long leaving the call may take before Left is reported all the same, and
# how often the Left patch is retried when the TalkRoom changed meanwhile.
_LEAVE_CALL_SECONDS = 3.0
_REPORT_TRIES = 3


class State(enum.StrEnum):
    """Where a room gateway is with its call."""

    JOINING = "Joining"
    IN_CALL = "InCall"
    IDLE = "Idle"
    LEFT = "Left"
    FAILED = "Failed"


@dataclass(frozen=True, slots=True)
class Report:
    """The state a room gateway reports, with the numbers and the reason behind it."""

    state: State
    message: str
    speakers: int = 0
    targets: int = 0

    @property
    def joined(self) -> bool:
        """In the call (with speakers or not yet): what readiness means for a room gateway."""
        return self.state in (State.IN_CALL, State.IDLE)


def status_patch(
    report: Report, previous: Mapping[str, Any], *, generation: int, at: str
) -> dict[str, Any]:
    """The status merge patch that makes ``previous`` show ``report`` ({}: it already does).

    Only ``room`` and the ``InCall`` condition are written; the operator's conditions are kept.
    """
    room = {
        "state": str(report.state),
        "speakers": report.speakers,
        "targets": report.targets,
        "message": report.message,
    }
    old_room = previous.get("room") or {}
    conditions = list(previous.get("conditions") or ())
    old = next((c for c in conditions if c.get("type") == CONDITION), None)
    status = "True" if report.joined else "False"
    condition = {
        "type": CONDITION,
        "status": status,
        "reason": str(report.state),
        "message": report.message,
        "observedGeneration": generation,
    }
    same_room = all(old_room.get(key) == value for key, value in room.items())
    same_condition = old is not None and all(old.get(k) == v for k, v in condition.items())
    if same_room and same_condition:
        return {}
    unchanged_state = old_room.get("state") == room["state"]
    room["lastTransitionTime"] = old_room.get("lastTransitionTime", at) if unchanged_state else at
    kept = old is not None and old.get("status") == status
    condition["lastTransitionTime"] = old.get("lastTransitionTime", at) if kept and old else at
    merged = [c for c in conditions if c.get("type") != CONDITION] + [condition]
    return {"room": room, "conditions": merged}


class Attendance:
    """Keeps one gateway in its room's call as its TalkRoom asks; reports the state back."""

    def __init__(self, settings: TalkSettings, rooms: Rooms, talkroom: OwnTalkRoom) -> None:
        self._settings = settings
        self._token = settings.room_token
        self._rooms = rooms
        self._talkroom = talkroom
        self._wish: Wish | None = None
        self._observed: dict[str, Any] | None = None
        self._applied: frozenset[str] = frozenset()
        self._closed_reason: str | None = None
        self._inactive = "the TalkRoom is inactive"
        self._report = Report(State.JOINING, f"reading TalkRoom {talkroom.name}")
        self._announced: State | None = None
        self._changed = asyncio.Event()
        self._join_backoff = Backoff(
            settings.reconnect_initial_seconds, settings.reconnect_max_seconds
        )
        self._retry_at = 0.0

    @property
    def report(self) -> Report:
        """The state now."""
        return self._report

    def room_closed(self, token: str, reason: str) -> None:
        """Told by :class:`Rooms` when the room finished and was closed (``on_closed``)."""
        if token == self._token and reason not in _OWN_LEAVE:
            self._closed_reason = reason
            self._changed.set()

    async def run(self) -> None:
        """Follow the TalkRoom and attend the call until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._follow(), name=f"follow-{self._talkroom.name}")
            tasks.create_task(self._attend(), name=f"attend-{self._token}")

    async def leave_and_report(self) -> None:
        """On the way out (SIGTERM): leave the call and say Left in the TalkRoom.

        The operator stops the gateway as soon as its TalkRoom is set inactive, often before the
        attending task has said so; nothing else would ever write that the gateway left. The
        TalkRoom may have changed since the gateway last saw it (the operator's own status write
        races this one): on a conflict it is read again and the patch retried.
        """
        if self._rooms.room(self._token) is not None:
            try:
                async with asyncio.timeout(_LEAVE_CALL_SECONDS):
                    await self._rooms.leave(self._token)
            except TimeoutError:
                log.warning("room %s: the call did not end in time; reporting Left", self._token)
        inactive = self._wish is not None and not self._wish.active
        why = self._inactive if inactive else "the room gateway stopped"
        if self._report.state is not State.LEFT:
            self._set(Report(State.LEFT, f"left the call: {why}"))
        for _ in range(_REPORT_TRIES):
            if await self._publish():
                return
            try:
                self._observed = await self._talkroom.get()
            except (TalkRoomGone, ClusterError, httpx.HTTPError) as exc:
                log.info("TalkRoom %s: Left not written: %r", self._talkroom.name, exc)
                return
        log.warning("TalkRoom %s: Left not written: it kept changing", self._talkroom.name)

    # Following the TalkRoom

    async def _follow(self) -> None:
        backoff = Backoff(self._settings.reconnect_initial_seconds, 30.0)
        while True:
            try:
                current = await self._talkroom.get()
                self._observe(current)
                backoff.reset()
                async for changed in self._talkroom.watch(current["metadata"]["resourceVersion"]):
                    self._observe(changed)
                continue
            except TalkRoomGone as exc:
                # The garbage collector removes this pod next; until then, leave and say nothing.
                self._wish = Wish(frozenset(), "", active=False)
                self._inactive = "the TalkRoom was deleted"
                self._observed = None
                self._changed.set()
                log.info("%s", exc)
            except (ClusterError, httpx.HTTPError, ValueError, KeyError) as exc:
                log.warning("cannot follow TalkRoom %s: %r", self._talkroom.name, exc)
                if self._wish is None:
                    self._report = Report(State.FAILED, f"cannot read the TalkRoom: {exc}")
            await asyncio.sleep(backoff.next_delay())

    def _observe(self, body: dict[str, Any]) -> None:
        self._observed = body
        self._inactive = "the TalkRoom is inactive"
        wish = Wish.of(body)
        if wish != self._wish:
            self._wish = wish
            self._changed.set()

    # Attending the call

    async def _attend(self) -> None:
        while True:
            self._changed.clear()
            await self._reconcile()
            await self._publish()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.status_interval_seconds):
                    await self._changed.wait()

    async def _reconcile(self) -> None:
        wish = self._wish
        if wish is None:
            return
        if self._closed_reason is not None:
            self._room_left(self._closed_reason, wish)
        room = self._rooms.room(self._token)
        if not wish.active:
            self._applied = frozenset()
            if room is not None:
                await self._rooms.leave(self._token)
                self._set(Report(State.LEFT, f"left the call: {self._inactive}"))
            elif self._report.state is not State.LEFT:
                self._set(Report(State.LEFT, f"not in the call: {self._inactive}"))
            return
        if room is None:
            await self._join(wish)
        else:
            await self._follow_targets(wish)
        room = self._rooms.room(self._token)
        if room is not None:
            speakers = len(room.speakers)
            targets = len(room.targets.wanted)
            state = State.IN_CALL if speakers else State.IDLE
            who = (
                f"{speakers} speaker{'s' * (speakers != 1)}" if speakers else "nobody speaking yet"
            )
            message = (
                f"in the call with {who}, captions in {room.lang} "
                f"for {targets} participant{'s' * (targets != 1)}"
            )
            self._set(Report(state, message, speakers=speakers, targets=targets))

    def _room_left(self, reason: str, wish: Wish) -> None:
        self._closed_reason = None
        if reason.startswith(_SIGNALING_LOST):
            self._applied = frozenset()  # join again, after the backoff
            self._fail(reason)
            return
        # Only a new caption target makes the gateway join again (a new call, a new request).
        self._applied = wish.targets
        self._set(Report(State.LEFT, f"left the call: {reason}", targets=len(wish.targets)))

    async def _join(self, wish: Wish) -> None:
        if not wish.targets - self._applied:
            if self._report.state is not State.LEFT:  # a failed join nobody waits for any more
                self._set(Report(State.LEFT, "not in the call: nobody wants captions"))
            return
        if time.monotonic() < self._retry_at:
            return
        self._set(
            Report(
                State.JOINING,
                f"joining room {self._token} through {self._settings.signaling_url}",
                targets=len(wish.targets),
            )
        )
        await self._publish()
        try:
            for target in sorted(wish.targets):
                await self._rooms.transcribe(self._token, target, enable=True, lang=wish.language)
        except (
            SignalingUnavailable,
            SignalingRefused,
            AdmissionRefused,
            UnsupportedLanguage,
        ) as exc:
            self._fail(f"cannot join room {self._token}: {exc}")
            return
        self._join_backoff.reset()
        self._retry_at = 0.0
        self._applied = wish.targets

    async def _follow_targets(self, wish: Wish) -> None:
        for target in sorted(wish.targets - self._applied):
            await self._rooms.transcribe(self._token, target, enable=True, lang=None)
        for target in sorted(self._applied - wish.targets):
            await self._rooms.transcribe(self._token, target, enable=False, lang=None)
        self._applied = wish.targets
        room = self._rooms.room(self._token)
        if room is not None and room.lang != wish.language:
            try:
                self._rooms.set_language(self._token, wish.language)
            except UnsupportedLanguage as exc:
                log.warning("room %s: keeps %s: %s", self._token, room.lang, exc)

    def _fail(self, message: str) -> None:
        delay = self._join_backoff.next_delay()
        self._retry_at = time.monotonic() + delay
        self._set(Report(State.FAILED, f"{message} (retrying in {delay:.0f} s)"))

    def _set(self, report: Report) -> None:
        if report != self._report:
            log.info("room %s: %s: %s", self._token, report.state, report.message)
        self._report = report

    # Reporting

    async def _publish(self) -> bool:
        """Write the report into the status (and an Event on a new state).

        Returns:
            False when the TalkRoom had changed meanwhile (409) and the status was not written.
        """
        body = self._observed
        if body is None:
            return True
        meta = body["metadata"]
        patch = status_patch(
            self._report,
            body.get("status") or {},
            generation=int(meta.get("generation", 1)),
            at=now(),
        )
        try:
            if patch:
                written = await self._talkroom.patch_status(
                    patch, resource_version=meta["resourceVersion"]
                )
                if written is None:
                    return False  # the Event waits for the status that says the same
                self._observed = written
            if self._report.state is not self._announced:
                self._announced = self._report.state
                await self._talkroom.post_event(
                    uid=meta["uid"],
                    reason=str(self._report.state),
                    message=self._report.message,
                    warning=self._report.state is State.FAILED,
                )
        except (ClusterError, httpx.HTTPError) as exc:
            log.warning("cannot report to TalkRoom %s: %r", self._talkroom.name, exc)
        return True
