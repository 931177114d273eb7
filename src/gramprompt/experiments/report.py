"""An experiment's finished runs -> the paper's table layouts (Table 1/6/7 for base-to-new, 2-5 for transfer)."""
from __future__ import annotations

from ..data.registry import spec_name
from ..eval.table import paper_table, significance_table, transfer_paper_table, transfer_significance_table
from .config import Experiment, Row
from .runner import plan, summaries


def comparisons(rows: list[Row]) -> list[tuple[str, str, str, str]]:
    """(label, title, base label, base title) of each ``Row.compare`` whose both rows are in ``rows``."""
    by_label = {r.label: r for r in rows}
    return [(r.label, r.title, c, by_label[c].title) for r in rows for c in r.compare if c in by_label]


def experiment_tables(exp: Experiment) -> str:
    """Every table of ``exp`` as Markdown, from whatever runs have finished ("–" for the others)."""
    runs = summaries(exp)
    by_label = {r.label: r for r in exp.rows}
    parts = []
    for table in exp.tables_or_default():
        rows = [by_label[label] for label in table.rows] if table.rows else list(exp.rows)
        pairs = [(r.label, r.title) for r in rows]
        columns = list(table.columns) or [spec_name(c) for c in exp.columns]
        tests = comparisons(rows)
        if exp.protocol == "base2new":
            body = paper_table(runs, pairs, columns)
            if tests:
                body += "\n\n" + significance_table(runs, tests, columns)
        else:
            source = spec_name(exp.source)
            body = transfer_paper_table(runs, pairs, source, columns)
            if tests:
                body += "\n\n" + transfer_significance_table(runs, tests, source, columns)
        parts.append(f"## {table.title}\n\n{body}")
    done = len(runs)  # one summary per finished run job (with several hierarchies, one per hierarchy and seed)
    total = sum(job.kind == "run" for job in plan(exp))
    how = ("H of an average row is the harmonic mean of the averaged Base and New." if exp.protocol == "base2new" else
           "Cells are means over seeds; Average is the mean over the targets.")
    note = (f"{exp.name}: {exp.shots} shots, seeds {', '.join(map(str, exp.seeds))}, backbone {exp.backbone}; "
            f"{done} of {total} runs finished. {how}")
    return "\n\n".join([note, *parts]) + "\n"
