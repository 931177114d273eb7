"""An experiment's finished runs -> the paper's table layouts (Table 1/6/7 for base-to-new, 2-5 for transfer)."""
from __future__ import annotations

from ..data.registry import spec_name
from ..eval.table import paper_table, transfer_paper_table
from .config import Experiment
from .runner import summaries


def experiment_tables(exp: Experiment) -> str:
    """Every table of ``exp`` as Markdown, from whatever runs have finished ("–" for the others)."""
    runs = summaries(exp)
    by_label = {r.label: r for r in exp.rows}
    parts = []
    for table in exp.tables_or_default():
        rows = [by_label[label] for label in table.rows] if table.rows else list(exp.rows)
        pairs = [(r.label, r.title) for r in rows]
        columns = list(table.columns) or [spec_name(c) for c in exp.columns]
        if exp.protocol == "base2new":
            body = paper_table(runs, pairs, columns)
        else:
            body = transfer_paper_table(runs, pairs, spec_name(exp.source), columns)
        parts.append(f"## {table.title}\n\n{body}")
    done = len({(s['dataset'], s['label'], s['seed']) for s in runs})
    total = len(exp.columns if exp.protocol == "base2new" else [exp.source]) * len(exp.rows) * len(exp.seeds)
    how = ("H of an average row is the harmonic mean of the averaged Base and New." if exp.protocol == "base2new" else
           "Cells are means over seeds; Average is the mean over the targets.")
    note = (f"{exp.name}: {exp.shots} shots, seeds {', '.join(map(str, exp.seeds))}, backbone {exp.backbone}; "
            f"{done} of {total} runs finished. {how}")
    return "\n\n".join([note, *parts]) + "\n"
