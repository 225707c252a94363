"""The Jinja2 environment every HTML page is drawn with: the audit and impact pages here, and a pipeline's own pages (`render_template`).

A page's module builds a plain context (strings, numbers, lists, dicts) and its template, in the `templates/`
folder of the module's package, lays it out. Autoescape is on for every template: a value from the data (an
artifact's name, a run's error, a file path) is escaped by Jinja2, never by hand; only what a module wraps in
`markupsafe.Markup` on purpose (a base64 image, an SVG drawn by `picture.render_svg`, which escapes its own text)
goes in as it is. A name the template uses but the context lacks is an error (StrictUndefined), not an empty cell.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined


@cache
def environment(package: str) -> Environment:
    """The environment for one package's `templates/` folder (made once per package)."""
    return Environment(
        loader=PackageLoader(package, "templates"),
        autoescape=True,  # every template here is HTML (*.html.j2): escape everything that is not Markup
        undefined=StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,  # a line holding only a {% tag %} leaves no blank line behind
        keep_trailing_newline=True,  # a page ends with a newline, like the file it is written to
    )


def render(package: str, template: str, **context: Any) -> str:
    """`template` (a file in `<package>/templates/`) drawn with `context`."""
    return environment(package).get_template(template).render(**context)
