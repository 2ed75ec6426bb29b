"""The languages Talk can choose from, as ``GET /api/v1/languages`` describes them (pure data)."""

from __future__ import annotations

from collections.abc import Mapping
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
    return describe_named({code: _NAMES.get(code.split("-")[0], code) for code in codes})


def describe_named(names: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The same for languages whose names are given (a translation provider's), in their order."""
    return {
        code: {
            "name": name,
            "metadata": {
                "separator": "" if code.split("-")[0] in _NO_SEPARATOR else " ",
                "rtl": code.split("-")[0] in _RIGHT_TO_LEFT,
            },
        }
        for code, name in names.items()
    }
