"""One gettext catalogue for every string the shopper sees: `kiosk/locale/<lang>/LC_MESSAGES/kiosk.po`.

English is the source language (the msgids); Chinese is `zh`. The `.po` file is read directly (a
small parser of the gettext format) so that no compiled `.mo` file has to be kept in step with it.
"""

from __future__ import annotations

import ast
import gettext
from importlib import resources
from pathlib import Path

__all__ = ["LANGUAGES", "Catalogue", "parse_po"]

LANGUAGES = ("zh", "en")


def parse_po(text: str) -> dict[str, str]:
    """msgid → msgstr of a `.po` file (single and multi-line strings; untranslated entries left out)."""
    out: dict[str, str] = {}
    key: str | None = None
    current: list[str] = []
    msgid: str | None = None

    def flush() -> None:
        nonlocal msgid
        if key == "msgstr" and msgid:
            value = "".join(current)
            if value:
                out[msgid] = value
            msgid = None

    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("msgid ", "msgstr ")):
            if key == "msgid":
                msgid = "".join(current)
            flush()
            key, _, rest = line.partition(" ")
            current = [ast.literal_eval(rest)]
        elif line.startswith('"'):
            current.append(ast.literal_eval(line))
    if key == "msgid":
        msgid = "".join(current)
    flush()
    return out


class _PoTranslations(gettext.NullTranslations):
    def __init__(self, messages: dict[str, str]) -> None:
        super().__init__()
        self.messages = messages

    def gettext(self, message: str) -> str:
        return self.messages.get(message, message)


class Catalogue:
    def __init__(self, locale_dir: Path | None = None) -> None:
        base = locale_dir or Path(str(resources.files("kiosk") / "locale"))
        self.translations: dict[str, gettext.NullTranslations] = {"en": gettext.NullTranslations()}
        for lang in LANGUAGES:
            po = base / lang / "LC_MESSAGES" / "kiosk.po"
            if po.exists():
                self.translations[lang] = _PoTranslations(parse_po(po.read_text(encoding="utf-8")))

    def gettext(self, lang: str, message: str) -> str:
        return self.translations.get(lang, self.translations["en"]).gettext(message)
