"""Server text on screen: always literal, never markup.

Model names, key names, audit targets (a request path), error messages and file paths come from the
gateway, which got many of them from whoever sent a request. Read as markup, `[/x]` is a closing tag that
crashes the widget, and `[@click=app.quit]`, `[link=…]` or `[$accent]` restyle or arm the screen.
Escaping is not enough: Textual's markup also reads `[B]`, `[ b]` and `[$var]`, which `escape` leaves
alone. So server text reaches widgets only as `Text`/`Content` objects or through `markup=False`.
"""

from __future__ import annotations

from rich.text import Text


def literal(value: object) -> Text:
    """`value` as plain text for a table cell or an option: brackets are only brackets."""
    return Text(str(value))


def literal_row(*values: object) -> tuple[Text, ...]:
    """A table row of literal cells."""
    return tuple(literal(value) for value in values)
