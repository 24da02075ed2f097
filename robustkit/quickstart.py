"""``robustkit quickstart``: harden one model per domain on built-in data and compare them in one table.

For each domain (by default images on scikit-learn's 8x8 digits, tabular on the synthetic card
transactions, text on the demo spam corpus) it runs :func:`robustkit.pipeline.harden` with the
domain's defaults into ``OUT/<domain>/``, then prints one compact table (standard vs hardened, clean
vs under attack) and writes ``OUT/index.html`` linking the reports. Domains come from the registry,
so the core never imports them; a domain that is not installed is reported and skipped.

Example:
    >>> from robustkit.quickstart import summary_rows
    >>> metrics = {"domain": "toy", "models": {"hardened": {"clean_accuracy": 0.9,
    ...            "robust_accuracy": {"worst": 0.7}, "verdict": "robust at budget 0.25"}}}
    >>> summary_rows(metrics)
    [('toy', 'hardened', 'accuracy', 0.9, 0.7, 'robust at budget 0.25')]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustkit.config import RunConfig
from robustkit.domain import available_domains
from robustkit.errors import ConfigError
from robustkit.files import atomic_write_text
from robustkit.rendering import render

__all__ = ["DEFAULT_DOMAINS", "format_table", "run", "summary_rows", "write_index"]

log = logging.getLogger("robustkit")

#: The domains ``quickstart`` hardens by default, each on its built-in data.
DEFAULT_DOMAINS = ("images", "tabular", "text")

Row = tuple[str, str, str, float, float, str]


def summary_rows(metrics: dict[str, Any]) -> list[Row]:
    """(domain, model, measure, clean, under the worst attack, verdict) per model of a run.

    The model's headline (``metrics.json``'s ``headline``): accuracy, or the recall of the attacked
    class at the operating threshold where only one class is attacked (fraud, spam: accuracy there is
    dominated by the untouched class), clean and under the worst case of every attack that was run.
    """
    rows = []
    for name, m in metrics["models"].items():
        lead = m.get("headline") or {"measure": "accuracy", "clean": m["clean_accuracy"],
                                     "attacked": m["robust_accuracy"]["worst"]}  # a run written before headlines
        rows.append((metrics["domain"], name, str(lead["measure"]), float(lead["clean"]), float(lead["attacked"]),
                     m["verdict"]))
    return rows


def _domain_line(metrics: dict[str, Any]) -> str:
    threat = metrics["threat"]
    return (f"{metrics['domain']}: data {metrics.get('dataset', {}).get('name', '?')}, threat {threat['space']} "
            f"with budget {threat['budget']:g}, attacks {', '.join(metrics.get('attacks', []))}")


def format_table(runs: dict[str, dict[str, Any]]) -> str:
    """The compact comparison table printed at the end of a quickstart."""
    lines = [f"{'domain':8s} {'model':9s} {'measure':8s} {'clean':>7s} {'attacked':>9s}  verdict"]
    for metrics in runs.values():
        for domain, name, measure, clean, attacked, verdict in summary_rows(metrics):
            lines.append(f"{domain:8s} {name:9s} {measure:8s} {clean:7.1%} {attacked:9.1%}  {verdict}")
    return "\n".join(lines)


def write_index(out: Path, runs: dict[str, dict[str, Any]], seconds: dict[str, float]) -> Path:
    """``OUT/index.html``: the comparison table and a link to each domain's ``report.html``."""
    rows = [{"domain": d,
             "cells": [name, measure, f"{clean:.1%}", f"{attacked:.1%}", verdict, f"{seconds[domain]:.0f} s"]}
            for domain, metrics in runs.items()
            for d, name, measure, clean, attacked, verdict in summary_rows(metrics)]
    path = out / "index.html"
    atomic_write_text(path, render("index.html.j2", rows=rows, notes=[_domain_line(m) for m in runs.values()]))
    return path


def run(out: str | Path, domains: Sequence[str] = DEFAULT_DOMAINS, *, seed: int = 0, device: str = "cpu",
        threads: int | None = 1, batch_size: int | None = None, force: bool = False, progress: bool = False,
        argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Harden each domain on its built-in data into ``out/<domain>``; return each run's metrics.

    Everything is checked before any work: an unknown name raises :class:`ConfigError` listing the
    installed ones, and an existing run in ``out/<domain>`` is refused unless ``force``.
    """
    from robustkit import pipeline

    out = Path(out)
    known = available_domains()
    unknown = [d for d in domains if d not in known]
    if unknown:
        raise ConfigError(f"unknown domain {unknown[0]!r} for quickstart: installed domains are {', '.join(known)}")
    if not domains:
        raise ConfigError("quickstart needs at least one domain")
    configs = {d: RunConfig(domain=d, seed=seed, device=device, threads=threads, batch_size=batch_size)
               for d in domains}
    for domain, config in configs.items():
        config.validate()
        pipeline.prepare_run_dir(out / domain, force=force, resume=False)
    runs: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for domain, config in configs.items():
        log.info("quickstart: hardening the %s domain on its built-in data", domain)
        start = time.perf_counter()
        runs[domain] = pipeline.harden(config, out / domain, force=force, progress=progress, argv=argv)
        seconds[domain] = time.perf_counter() - start
    write_index(out, runs, seconds)
    return runs
