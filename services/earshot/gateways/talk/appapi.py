"""AppAPI's side of the ExApp contract: checking Nextcloud's request headers, signing our own.

Every request from Nextcloud except ``/heartbeat`` carries ``AA-VERSION``, ``EX-APP-ID``,
``EX-APP-VERSION`` and ``AUTHORIZATION-APP-API`` = base64("<userid>:<APP_SECRET>") (PROTOCOLS.md §2).
The secret is compared in constant time; the user id is returned for logging.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping

REQUIRED = ("AA-VERSION", "EX-APP-ID", "EX-APP-VERSION", "AUTHORIZATION-APP-API")


class Unauthorized(Exception):
    """The request does not come from our Nextcloud (HTTP 401)."""


def check(headers: Mapping[str, str], *, app_id: str, app_secret: str) -> str:
    """Verify AppAPI headers (looked up case-insensitively by the caller's mapping).

    Returns:
        The Nextcloud user id the request acts for (empty for system requests).

    Raises:
        Unauthorized: a header is missing, the app id is not ours or the secret is wrong.
    """
    missing = [name for name in REQUIRED if not headers.get(name)]
    if missing:
        raise Unauthorized(f"missing AppAPI headers: {', '.join(missing)}")
    if headers["EX-APP-ID"] != app_id:
        raise Unauthorized(f"this is the ExApp {app_id!r}, not {headers['EX-APP-ID']!r}")
    try:
        decoded = base64.b64decode(headers["AUTHORIZATION-APP-API"], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("AUTHORIZATION-APP-API is not base64 of '<user>:<secret>'") from None
    user, sep, secret = decoded.partition(":")
    if not sep or not app_secret or not hmac.compare_digest(secret.encode(), app_secret.encode()):
        raise Unauthorized("AUTHORIZATION-APP-API does not carry this app's secret")
    return user


def sign(
    *, app_id: str, app_version: str, aa_version: str, app_secret: str, user: str = ""
) -> dict[str, str]:
    """The headers of a request from the ExApp to Nextcloud."""
    token = base64.b64encode(f"{user}:{app_secret}".encode()).decode()
    return {
        "AA-VERSION": aa_version,
        "EX-APP-ID": app_id,
        "EX-APP-VERSION": app_version,
        "AUTHORIZATION-APP-API": token,
        "OCS-APIRequest": "true",
    }
