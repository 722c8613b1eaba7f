"""Collects what a browser reports while pages run under the Content-Security-Policy.

`watch(context)` records every `securitypolicyviolation` event (through a binding: the listener is
an init script, which CDP injects regardless of the page's policy) and every console error or
uncaught exception, for all pages of the context and across navigations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Watch", "watch"]

_LISTENER = """
document.addEventListener("securitypolicyviolation", (e) => window.__omnishelfCsp(
  `${e.violatedDirective} blocked ${e.blockedURI || "inline"} at ${e.sourceFile || "?"}:${e.lineNumber} ${e.sample}`));
"""


@dataclass
class Watch:
    violations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def clear(self) -> None:
        self.violations.clear()
        self.errors.clear()


def watch(context: Any) -> Watch:
    w = Watch()

    def violation(source: dict[str, Any], text: str) -> None:
        w.violations.append(f"{source['page'].url}: {text}")

    def console(message: Any) -> None:
        if message.type == "error":
            w.errors.append(f"{message.page.url if message.page else '?'}: console error: {message.text}")

    context.expose_binding("__omnishelfCsp", violation)
    context.add_init_script(_LISTENER)
    context.on("console", console)
    context.on("weberror", lambda e: w.errors.append(f"{e.page.url if e.page else '?'}: uncaught: {e.error}"))
    return w
