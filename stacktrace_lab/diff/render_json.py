"""A `TraceDiff` as JSON: `TraceDiff.to_json()`, indented, keys sorted (deterministic).

The first divergent step is under `first_divergence` (null when the rows are
the same); `same` is the verdict the exit status follows.
"""

from __future__ import annotations

import json

from .model import TraceDiff


def render_json(diff: TraceDiff) -> str:
    return json.dumps(diff.to_json(), indent=2, sort_keys=True) + "\n"
