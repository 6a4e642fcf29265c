"""Attribute docstrings of config dataclasses (the string literal under each field), read from the source."""

import ast
import inspect
import textwrap


def field_docs(cls: type) -> dict[str, str]:
    """``{field name: its docstring}`` of a dataclass defined in a source file."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
