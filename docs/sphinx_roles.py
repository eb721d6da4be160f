"""A griffe extension: read the docstrings' reStructuredText roles as Markdown.

uow's docstrings write ``:class:`Name``` and end a paragraph with ``::`` before a
literal block, as Sphinx does; mkdocstrings renders Markdown, where those would show
as written. This turns ``:role:`target``` into ``target`` in code style (``~pkg.Name``
into ``Name``), double backquotes into single ones, and a closing ``::`` into ``:``;
the indented block after it is already a code block in Markdown.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|exc|data|mod|obj):`~?([^`]+)`")
LITERAL = re.compile(r"(?<=\S)::$", re.MULTILINE)
DOUBLE = re.compile(r"``([^`]+)``")


def markdown(text: str) -> str:
    """``text`` with its reStructuredText roles and literals in Markdown."""
    text = ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    text = DOUBLE.sub(r"`\1`", text)
    return LITERAL.sub(":", text)


class SphinxRoles(griffe.Extension):
    """Rewrite each loaded object's docstring with :func:`markdown`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Called by griffe for every object it loads."""
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
