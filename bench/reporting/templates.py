"""The report pages' markup, style and script, kept as files in ``templates/`` (not Python strings).

:func:`page` fills ``templates/page.html`` (``string.Template``: ``$title``, ``$style``, ``$body``,
``$script``); values are inserted as given, so callers escape what they put in.
"""
from __future__ import annotations

import functools
from importlib.resources import files
from string import Template


@functools.lru_cache(maxsize=None)
def template_text(name: str) -> str:
    """The text of ``templates/<name>`` shipped with the package."""
    return files("bench.reporting").joinpath("templates", name).read_text(encoding="utf-8")


def page(title: str, body: str, styles: tuple[str, ...] = ("report.css",),
         script: str | None = None) -> str:
    """A self-contained HTML page: the named style sheets inline, an optional inline script."""
    return Template(template_text("page.html")).substitute(
        title=title, style="".join(template_text(s) for s in styles), body=body,
        script=f"<script>{template_text(script)}</script>" if script else "")
