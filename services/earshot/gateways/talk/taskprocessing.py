"""Nextcloud TaskProcessing as the ExApp's translator (PROTOCOLS.md §2, ``core:text2text:translate``).

The languages come from the task type's enum values (``GET .../tasks_consumer/tasktypes``, cached
for a while); a translation is scheduled (``POST .../tasks_consumer/schedule``) and polled (``GET
.../tasks_consumer/task/{id}``) until it succeeds or fails. Two kinds of failure, as Talk needs
them: :class:`TranslationUnavailable` when no provider is installed or the task type is unusable
(Talk hears 550 and stops asking) and :class:`TranslationFailed` for everything else (500).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx

TASK_TYPE = "core:text2text:translate"
TASK_TYPES = "/ocs/v2.php/taskprocessing/tasks_consumer/tasktypes"
SCHEDULE = "/ocs/v2.php/taskprocessing/tasks_consumer/schedule"
DETECT_LANGUAGE = "detect_language"
SUCCESSFUL = "STATUS_SUCCESSFUL"
FAILED = ("STATUS_FAILED", "STATUS_CANCELLED")


def task_path(task_id: int) -> str:
    """Where a scheduled task is polled."""
    return f"/ocs/v1.php/taskprocessing/tasks_consumer/task/{task_id}"


class TranslationError(Exception):
    """A translation could not be had."""


class TranslationUnavailable(TranslationError):
    """No translation provider, or one that cannot be used: fatal until an admin acts (550)."""


class TranslationFailed(TranslationError):
    """This translation failed; a later one may work (500)."""


@dataclass(frozen=True, slots=True)
class TranslationLanguages:
    """The provider's languages: code -> display name, in its order."""

    origin: dict[str, str]
    target: dict[str, str]

    def can_translate(self, origin: str, target: str) -> bool:
        """Whether ``origin`` (or language detection) to ``target`` is offered."""
        known_origin = origin in self.origin or DETECT_LANGUAGE in self.origin
        return known_origin and target in self.target

    def origin_for(self, origin: str) -> str:
        """The origin language to ask for: the room's, or detection when it is not listed."""
        return origin if origin in self.origin else DETECT_LANGUAGE


class TaskProcessing:
    """Translates through Nextcloud with an AppAPI-signed client owned by the caller."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        app_id: str,
        poll_seconds: float,
        timeout_seconds: float,
        languages_ttl_seconds: float,
    ) -> None:
        self._http = http
        self._app_id = app_id
        self._poll = poll_seconds
        self._timeout = timeout_seconds
        self._ttl = languages_ttl_seconds
        self._cached: tuple[float, TranslationLanguages] | None = None

    async def languages(self) -> TranslationLanguages:
        """The provider's origin and target languages (cached for the TTL).

        Raises:
            TranslationUnavailable: no ``core:text2text:translate`` task type, or one without the
                language inputs.
            TranslationFailed: Nextcloud could not be asked.
        """
        if self._cached is not None and time.monotonic() - self._cached[0] < self._ttl:
            return self._cached[1]
        data = await self._ocs("GET", TASK_TYPES, fatal_4xx=True)
        languages = _parse_task_types(data)
        self._cached = (time.monotonic(), languages)
        return languages

    async def translate(self, text: str, *, origin: str, target: str, custom_id: str) -> str:
        """``text`` in ``target``.

        Raises:
            TranslationUnavailable: no provider (412 on schedule) or another refusal of the request.
            TranslationFailed: the task failed, timed out or Nextcloud could not be asked.
        """
        body = {
            "type": TASK_TYPE,
            "appId": self._app_id,
            "customId": custom_id,
            "input": {"input": text, "origin_language": origin, "target_language": target},
        }
        task = _task_of(await self._ocs("POST", SCHEDULE, json=body, fatal_4xx=True))
        deadline = time.monotonic() + self._timeout
        while task["status"] != SUCCESSFUL:
            if task["status"] in FAILED:
                raise TranslationFailed(f"translation task {task['id']} ended {task['status']}")
            if time.monotonic() > deadline:
                raise TranslationFailed(
                    f"translation task {task['id']} took over {self._timeout} s"
                )
            await asyncio.sleep(self._poll)
            task = _task_of(await self._ocs("GET", task_path(int(task["id"])), fatal_4xx=False))
        output = task.get("output")
        if not isinstance(output, dict) or not isinstance(output.get("output"), str):
            raise TranslationFailed(f"translation task {task['id']} has no output text: {output!r}")
        translated: str = output["output"]
        return translated

    async def _ocs(self, method: str, path: str, *, fatal_4xx: bool, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise TranslationFailed(f"cannot reach Nextcloud TaskProcessing: {exc!r}") from None
        if response.status_code == httpx.codes.PRECONDITION_FAILED:
            raise TranslationUnavailable(
                "Nextcloud has no translation provider (TaskProcessing answered 412): install a"
                " text2text translate provider"
            )
        if response.is_client_error and fatal_4xx and response.status_code != 429:
            raise TranslationUnavailable(
                f"Nextcloud TaskProcessing refused {method} {path}: {response.status_code}"
                f" {response.text[:200]}"
            )
        if response.is_error:
            raise TranslationFailed(
                f"Nextcloud TaskProcessing answered {response.status_code} to {method} {path}"
            )
        try:
            return response.json()["ocs"]["data"]
        except (ValueError, KeyError, TypeError):
            raise TranslationFailed(f"{method} {path} did not answer OCS JSON") from None


def _task_of(data: Any) -> dict[str, Any]:
    task = data.get("task") if isinstance(data, dict) else None
    if not isinstance(task, dict) or "id" not in task or "status" not in task:
        raise TranslationFailed(f"not a TaskProcessing task: {data!r}")
    return task


def _parse_task_types(data: Any) -> TranslationLanguages:
    types = data.get("types") if isinstance(data, dict) else None
    task_type = types.get(TASK_TYPE) if isinstance(types, dict) else None
    if not isinstance(task_type, dict):
        raise TranslationUnavailable(
            f"Nextcloud offers no {TASK_TYPE} task type: install a text2text translate provider"
        )
    shape = task_type.get("inputShape") or {}
    enums = task_type.get("inputShapeEnumValues") or {}
    if "origin_language" not in shape or "target_language" not in shape:
        raise TranslationUnavailable(
            f"{TASK_TYPE} lacks the origin_language and target_language inputs"
        )
    return TranslationLanguages(
        origin=_names(enums.get("origin_language")), target=_names(enums.get("target_language"))
    )


def _names(entries: Any) -> dict[str, str]:
    return {
        str(entry["value"]): str(entry.get("name") or entry["value"])
        for entry in entries or ()
        if isinstance(entry, dict) and entry.get("value")
    }
