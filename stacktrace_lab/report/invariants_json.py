"""`invariants.json`: the check result, exactly as `stacktrace-lab check --json` prints it."""

from __future__ import annotations

import json

from ..analysis.model import CheckResult


def render_json(result: CheckResult) -> str:
    return json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n"
