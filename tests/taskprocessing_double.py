"""A double of Nextcloud's OCS TaskProcessing API as an ExApp consumes it (PROTOCOLS.md §2).

What cannot run here is Nextcloud itself; this double answers the three requests the ExApp makes
the way Nextcloud 33 does: ``GET /ocs/v2.php/taskprocessing/tasks_consumer/tasktypes`` lists the
task types that have a provider (``core:text2text:translate`` with its ``origin_language`` and
``target_language`` enum inputs only while a provider is installed); ``POST
/ocs/v2.php/taskprocessing/tasks_consumer/schedule`` validates the input against the task type and
answers the scheduled task, or 412 when no provider is installed; ``GET
/ocs/v1.php/taskprocessing/tasks_consumer/task/{id}`` answers the task, which the provider finishes
``delay`` seconds after it was scheduled (``STATUS_SUCCESSFUL`` with ``output.output``, or
``STATUS_FAILED`` with an ``errorMessage``). Every answer is OCS-wrapped and every request must carry
the AppAPI headers and ``OCS-APIRequest: true`` (401 otherwise). The "provider" translates by
prefixing the target language: ``[fr] hello``.
"""

from __future__ import annotations

import base64
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

TRANSLATE = "core:text2text:translate"
LANGUAGES = {"en": "English", "fr": "French", "de": "German"}


def translated(text: str, target: str) -> str:
    """What the double's provider makes of ``text``."""
    return f"[{target}] {text}"


def _ocs(data: Any, *, status: int = 200, message: str = "") -> JSONResponse:
    meta = {"status": "ok" if status < 400 else "failure", "statuscode": status, "message": message}
    return JSONResponse({"ocs": {"meta": meta, "data": data}}, status_code=status)


def _enum(names: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": name, "value": code} for code, name in names.items()]


@dataclass
class TaskProcessingDouble:
    """Nextcloud's TaskProcessing with a translation provider the test controls."""

    app_secret: str
    provider: bool = True
    delay: float = 0.0
    fail: bool = False
    origin: dict[str, str] = field(default_factory=lambda: dict(LANGUAGES))
    target: dict[str, str] = field(default_factory=lambda: dict(LANGUAGES))
    tasks: dict[int, dict[str, Any]] = field(default_factory=dict)
    polls: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def app(self) -> FastAPI:
        """The ASGI app answering the OCS requests."""
        api = FastAPI()

        @api.middleware("http")
        async def appapi_only(request: Request, call_next: Any) -> Any:
            if not self._signed(request):
                return _ocs(None, status=401, message="Current user is not logged in")
            return await call_next(request)

        @api.get("/ocs/v2.php/taskprocessing/tasks_consumer/tasktypes")
        async def task_types() -> JSONResponse:
            return _ocs({"types": {TRANSLATE: self._task_type()} if self.provider else {}})

        @api.post("/ocs/v2.php/taskprocessing/tasks_consumer/schedule")
        async def schedule(request: Request) -> JSONResponse:
            return self._schedule(await request.json())

        @api.get("/ocs/v1.php/taskprocessing/tasks_consumer/task/{task_id}")
        async def task(task_id: int) -> JSONResponse:
            self.polls += 1
            if task_id not in self.tasks:
                return _ocs(None, status=404, message="Task not found")
            return _ocs({"task": self._progress(self.tasks[task_id])})

        return api

    def transport(self) -> httpx.ASGITransport:
        """An httpx transport into the double (no socket)."""
        return httpx.ASGITransport(app=self.app())

    def scheduled(self) -> list[dict[str, Any]]:
        """The inputs of the tasks scheduled so far."""
        return [task["input"] for task in self.tasks.values()]

    def _signed(self, request: Request) -> bool:
        try:
            decoded = base64.b64decode(request.headers.get("AUTHORIZATION-APP-API", "")).decode()
        except ValueError:
            return False
        return (
            decoded.partition(":")[2] == self.app_secret
            and bool(request.headers.get("EX-APP-ID"))
            and request.headers.get("OCS-APIRequest") == "true"
        )

    def _task_type(self) -> dict[str, Any]:
        text = {"name": "Input text", "description": "", "type": "Text"}
        enum = {"name": "Language", "description": "", "type": "Enum"}
        return {
            "name": "Translate",
            "description": "Translate text from one language to another",
            "inputShape": {"input": text, "origin_language": enum, "target_language": enum},
            "inputShapeEnumValues": {
                "origin_language": _enum(self.origin),
                "target_language": _enum(self.target),
            },
            "inputShapeDefaults": {"origin_language": "detect_language"},
            "optionalInputShape": {},
            "optionalInputShapeEnumValues": {},
            "optionalInputShapeDefaults": {},
            "outputShape": {"output": {"name": "Result", "description": "", "type": "Text"}},
            "outputShapeEnumValues": {},
            "optionalOutputShape": {},
            "optionalOutputShapeEnumValues": {},
        }

    def _schedule(self, body: Any) -> JSONResponse:
        if not self.provider:
            return _ocs({"message": "No task type found"}, status=412, message="No task type")
        if not isinstance(body, dict) or body.get("type") != TRANSLATE:
            return _ocs({"message": "Invalid task type"}, status=400)
        given = body.get("input") or {}
        valid = (
            isinstance(given.get("input"), str)
            and given.get("origin_language") in {*self.origin, "detect_language"}
            and given.get("target_language") in self.target
        )
        if not valid:
            return _ocs({"message": "Invalid task input"}, status=400)
        task_id = next(self._ids)
        self.tasks[task_id] = {
            "id": task_id,
            "type": TRANSLATE,
            "status": "STATUS_SCHEDULED",
            "userId": None,
            "appId": body.get("appId", ""),
            "input": given,
            "output": None,
            "customId": body.get("customId"),
            "scheduledAt": time.time(),
            "progress": 0,
        }
        return _ocs({"task": self._progress(self.tasks[task_id])})

    def _progress(self, task: dict[str, Any]) -> dict[str, Any]:
        if task["status"] in ("STATUS_SCHEDULED", "STATUS_RUNNING"):
            if time.time() < task["scheduledAt"] + self.delay:
                task["status"] = "STATUS_RUNNING"
            elif self.fail:
                task.update(status="STATUS_FAILED", errorMessage="the provider failed", progress=1)
            else:
                text = translated(task["input"]["input"], task["input"]["target_language"])
                task.update(status="STATUS_SUCCESSFUL", output={"output": text}, progress=1)
        return dict(task)
