"""The one user-facing error type: it names the node, the input, what was expected and the fix."""

from __future__ import annotations


class NodeInputError(ValueError):
    def __init__(self, node: str, input_name: str, expected: str, got: str, fix: str):
        self.node, self.input_name = node, input_name
        super().__init__(f"{node}: input '{input_name}' expected {expected}, got {got}. Fix: {fix}.")


def check_choice(node: str, input_name: str, value, options) -> None:
    """A combo value must be one of its options (API clients can send anything)."""
    if value not in options:
        raise NodeInputError(node, input_name, f"one of {options}", repr(value), "pick a value from the list")
