"""The languages Talk can choose from, as ``GET /api/v1/languages`` describes them (pure data)."""

from __future__ import annotations

from typing import Any

_NAMES = {
    "en": "English",
    "fr": "French",
    "de": "German",
    "es": "Spanish",
    "it": "Italian",
    "pt": "Portuguese",
    "nl": "Dutch",
    "zh": "Chinese",
    "ja": "Japanese",
    "ar": "Arabic",
}
_RIGHT_TO_LEFT = frozenset({"ar", "fa", "he", "ur"})
# Languages written without spaces between words: captions are joined without a separator.
_NO_SEPARATOR = frozenset({"zh", "ja", "th"})


def describe(codes: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """A dict code -> {name, metadata} in the order offered (the first is the default)."""
    return {
        code: {
            "name": _NAMES.get(code.split("-")[0], code),
            "metadata": {
                "separator": "" if code.split("-")[0] in _NO_SEPARATOR else " ",
                "rtl": code.split("-")[0] in _RIGHT_TO_LEFT,
            },
        }
        for code in codes
    }
