"""What ``--help`` and ``earshot config`` say about settings, read from the settings class itself.

Names, aliases and defaults come from :class:`earshot.settings.Settings` and its
:data:`~earshot.settings.DEFAULTS` table: the help never restates them.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import AliasChoices, SecretStr
from rich.markup import escape

from earshot.settings import DEFAULTS, Settings
from earshot.storage.redis_partials import redacted


def variables(name: str) -> list[str]:
    """The environment variables of a setting: ``EARSHOT_*`` first, older names after."""
    alias = Settings.model_fields[name].validation_alias
    if not isinstance(alias, AliasChoices):
        return [name.upper()]
    return list(dict.fromkeys(str(choice) for choice in alias.choices))


def default(name: str) -> str:
    """A setting's default as the help shows it, with the older server's where it differs."""
    field = Settings.model_fields[name]
    value = field.get_default(call_default_factory=True)
    shown = "unset" if value is None else str(value)
    if name in DEFAULTS:
        shown += f"; {DEFAULTS[name].legacy} with the older server's variables"
    return shown


def option_help(name: str, text: str) -> str:
    """An option's help: ``text``, then the variables that set it and the default (escaped for
    typer's rich help, which would read the brackets as markup)."""
    return escape(f"{text} [env: {', '.join(variables(name))}; default: {default(name)}]")


def effective(settings: Settings) -> Iterator[str]:
    """One line per setting: its variables and the value in force (secrets hidden)."""
    for name in Settings.model_fields:
        value = getattr(settings, name)
        shown = "***" if isinstance(value, SecretStr) else ("" if value is None else str(value))
        if "://" in shown:
            shown = redacted(shown)  # a store URL's password
        origin = _origin(settings, name)
        yield f"{' | '.join(variables(name))} = {shown}{origin}"


def _origin(settings: Settings, name: str) -> str:
    if name in settings.given():
        return ""
    if name in settings.model_fields_set:  # filled in because the older server's names are used
        return "  (the older server's default)"
    return "  (default)"
