"""The "did you mean" of an unknown reference, at a bounded cost.

Thousands of unknown names must not cost thousands of searches through thousands of names
each (8000 in a 140 KB file took over a minute): the search looks at the nearest names only,
and the description's `Budget` allows as many searches as errors can be reported.
May import: lang.budget, lang.model, stdlib.
"""

from __future__ import annotations

import itertools

from .budget import Budget
from .model import Component

#: Names a "did you mean" search compares at most, the nearest scopes first.
SUGGESTION_CANDIDATES = 500


def suggest(name: str, scope: Component | None, budget: Budget | None = None) -> str | None:
    """`did you mean X?` from the names visible from SCOPE upwards.

    Bounded, as thousands of unknown names must not cost thousands of searches of thousands
    of names each: at most `SUGGESTION_CANDIDATES` names, and (with BUDGET) only as many
    searches as errors can be reported."""
    if budget is not None and not budget.may_suggest():
        return None
    import difflib  # here: only a failing description pays for it

    names: dict[str, None] = {}
    node = scope
    while node is not None:
        if name in node.attributes:  # a later part (HERE) missed it: it is further up
            return f"{name} is defined in {node.path or 'the top level'}"
        if len(names) < SUGGESTION_CANDIDATES:
            for candidate in itertools.islice(node.attributes, SUGGESTION_CANDIDATES):
                if not candidate.startswith("--"):
                    names[candidate] = None
        node = node.parent
    candidates = itertools.islice(names, SUGGESTION_CANDIDATES)
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"did you mean {close[0]}?" if close else None
