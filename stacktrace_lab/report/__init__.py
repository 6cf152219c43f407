"""Reporting a trace: one module per output.

- `rsp_plot`: rsp.png, rsp over time, one panel per stack region;
- `heatmap`: heatmap.png, what each stack slot held at each step;
- `content`: what the report says, gathered once (scenario, run, check, listings);
- `html`: index.html, self-contained, from the Jinja templates in `templates/`;
- `markdown`: report.md; `invariants_json`: invariants.json; `threads`: the threads line;
- `build`: `build_report()`, which writes them all into one directory.

Nothing is imported here, so `check` can use `invariants_json` without
loading matplotlib.
"""
