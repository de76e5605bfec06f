"""The words group metrics and result rows share, at the bottom of the import graph (imports nothing).

A group metric scores a set of jobs' outputs together and names the set it needs (``group_by``); the planner
forms the groups, the metrics declare them, the records write their rows and the analysis reads them: all four
take these names from here, so none of them imports another phase for a constant.
"""

from __future__ import annotations

SEEDS = "seeds"  # one source x method x preset x settings, over seeds (e.g. diversity across seeds)
CONCEPTS = (
    "concepts"  # one method x preset x settings but the object, over every source (all categories), seeds, objects
)
GROUP_KINDS = (SEEDS, CONCEPTS)
GroupKey = tuple[str, str]  # (kind, group id)
ALL_CATEGORIES = "all"  # the category of a row (or summary line) that spans every category
