"""A griffe extension for the API reference: the package's docstrings as Markdown.

hybridflow's docstrings are Google style with Sphinx roles and doctests (``Example:``
sections). mkdocstrings renders Markdown and knows only the plural ``Examples:`` section, so
before parsing, this extension

* renames ``Example:`` sections to ``Examples:`` (their ``>>>`` lines then render as code);
* turns roles such as ``:class:`~hybridflow.Chain``` and ``:math:`x^2``` into code spans;
* turns ``.. math::`` blocks into fenced code blocks.

The source is unchanged; only the text mkdocstrings sees. Loaded by ``mkdocs.yml``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

__all__ = ["SphinxToMarkdown", "to_markdown"]

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", flags=re.M)
_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|obj|exc|math|ref):`~?([^`]+)`")


def _role(match: re.Match[str]) -> str:
    text = match.group(1)
    if match.group(0).startswith(":math:"):
        return f"`{text}`"
    if match.group(0).split("`", 1)[1].startswith("~"):
        text = text.rsplit(".", 1)[-1]
    return f"`{text}`"


def _math_blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == ".. math::":
            indent = line[: len(line) - len(line.lstrip())]
            body: list[str] = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(indent + " ")):
                body.append(lines[i])
                i += 1
            while body and not body[-1].strip():
                body.pop()
            depth = min(len(b) - len(b.lstrip()) for b in body if b.strip()) if body else 0
            out += [f"{indent}```text", *(indent + b[depth:] for b in body), f"{indent}```", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def to_markdown(text: str) -> str:
    """The docstring ``text`` with the conversions above.

    Example:
        >>> to_markdown("See :class:`~hybridflow.Chain` and :math:`x^2`.")
        'See `Chain` and `x^2`.'
    """
    return _math_blocks(_ROLE.sub(_role, _EXAMPLE.sub(r"\1Examples:", text)))


class SphinxToMarkdown(griffe.Extension):
    """Rewrite each docstring with :func:`to_markdown` when griffe loads an object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
