"""An experiment's finished runs -> the paper's table layouts (Table 1/6/7 for base-to-new, 2-5 for transfer)."""
from __future__ import annotations

from ..data.registry import spec_name
from ..eval.table import (paper_table, row_label, significance_table, spread_table, transfer_paper_table,
                          transfer_significance_table, transfer_spread_table)
from .config import Experiment, Row
from .runner import plan, summaries


def comparisons(rows: list[Row]) -> list[tuple[str, str, str, str]]:
    """(label, title, base label, base title) of each ``Row.compare`` whose both rows are in ``rows``."""
    by_label = {r.label: r for r in rows}
    return [(r.label, r.title, c, by_label[c].title) for r in rows for c in r.compare if c in by_label]


def _titles(rows: list[Row], runs: list[dict], jobs: list, columns: list[str], base2new: bool) -> list[tuple[str, str]]:
    """(label, title) of each row; a row with only some of its planned runs finished says how many, so that a
    mean over fewer seeds (or hierarchies) is not read as the final number."""
    out = []
    for r in rows:
        planned = sum(j.row.label == r.label and (not base2new or spec_name(j.column) in columns) for j in jobs)
        done = sum(row_label(s) == r.label and (not base2new or s["dataset"] in columns) for s in runs)
        out.append((r.label, f"{r.title} ({done} of {planned} runs)" if 0 < done < planned else r.title))
    return out


def experiment_tables(exp: Experiment) -> str:
    """Every table of ``exp`` as Markdown, from whatever runs have finished ("–" for the others)."""
    runs = summaries(exp)
    jobs = [j for j in plan(exp) if j.kind == "run"]
    by_label = {r.label: r for r in exp.rows}
    parts = []
    for table in exp.tables_or_default():
        rows = [by_label[label] for label in table.rows] if table.rows else list(exp.rows)
        columns = list(table.columns) or [spec_name(c) for c in exp.columns]
        pairs = _titles(rows, runs, jobs, columns, exp.protocol == "base2new")
        tests = comparisons(rows)
        if exp.protocol == "base2new":
            body = paper_table(runs, pairs, columns)
            body += "\n\nSeed spread:\n\n" + spread_table(runs, pairs, columns)
            if tests:
                body += "\n\n" + significance_table(runs, tests, columns)
        else:
            source = spec_name(exp.source)
            body = transfer_paper_table(runs, pairs, source, columns)
            body += "\n\nSeed spread:\n\n" + transfer_spread_table(runs, pairs, source, columns)
            if tests:
                body += "\n\n" + transfer_significance_table(runs, tests, source, columns)
        parts.append(f"## {table.title}\n\n{body}")
    done = len(runs)  # one summary per finished run job (with several hierarchies, one per hierarchy and seed)
    total = len(jobs)
    how = ("H of an average row is the harmonic mean of the averaged Base and New." if exp.protocol == "base2new" else
           "Cells are means over seeds; Average is the mean over the targets.")
    note = (f"{exp.name}: {exp.shots} shots, seeds {', '.join(map(str, exp.seeds))}, backbone {exp.backbone}; "
            f"{done} of {total} runs finished. {how}")
    return "\n\n".join([note, *parts]) + "\n"
