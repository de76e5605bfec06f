"""YAML that cannot explode: aliases may not expand a document beyond a small budget of nodes.

A YAML alias (``*a``) repeats an anchored node without copying it, so ten lines of nested aliases ("billion
laughs") describe 10⁹ nodes. PyYAML builds them as shared objects, cheaply, but anything that walks the
result (checking, freezing, hashing to JSON) visits every repetition and runs for minutes while memory grows.
:class:`BudgetedLoader` counts the nodes of the composed document *as expanded* (shared nodes counted each
time they are reached, memoised so the count itself is cheap) and refuses a document above
:data:`MAX_EXPANDED_NODES` — far above any suite file (a large one has a few hundred nodes).
"""

from __future__ import annotations

import yaml

MAX_EXPANDED_NODES = 100_000


class YamlBudgetError(ValueError):
    """A document whose aliases expand beyond the budget; the message is one line."""


def expanded_size(node: yaml.Node, memo: dict[int, int], limit: int) -> int:
    """Nodes of ``node`` with every alias expanded (stops counting once above ``limit``)."""
    key = id(node)
    if key in memo:
        if memo[key] < 0:  # a node that contains itself: infinite when expanded
            return limit + 1
        return memo[key]
    memo[key] = -1
    total = 1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [item for pair in node.value for item in pair]
    else:
        children = []
    for child in children:
        total += expanded_size(child, memo, limit)
        if total > limit:
            break
    memo[key] = total
    return total


class BudgetedLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents expanding to more than :data:`MAX_EXPANDED_NODES` nodes."""

    max_expanded_nodes = MAX_EXPANDED_NODES

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        size = expanded_size(node, {}, self.max_expanded_nodes)
        if size > self.max_expanded_nodes:
            raise YamlBudgetError(
                f"YAML aliases expand to more than {self.max_expanded_nodes:,} values (an alias "
                "bomb?): refused; write the values out or use fewer nested aliases"
            )
        return node
