"""Execute the notebooks in this folder top to bottom, as CI does, and print how long each took.

Usage::

    python docs/notebooks/run_notebooks.py                  # every *.ipynb next to this script
    python docs/notebooks/run_notebooks.py text.ipynb       # some of them
    python docs/notebooks/run_notebooks.py --output DIR     # also keep the executed copies in DIR

Each notebook runs in a fresh ``python3`` kernel whose working directory is a temporary folder, so
nothing a notebook writes, and none of its outputs, lands in the repository; the files here stay
output-free. A cell that raises, runs past ``--timeout`` seconds or kills its kernel fails that
notebook: its error is printed with the cell's number and source, the remaining notebooks still run,
and the script exits with status 1. A notebook that holds stored outputs fails too: the repository keeps
them output-free. "kernel CPU" is the CPU time the kernel used: on a busy machine it is a steadier
measure of a notebook's cost than the wall time.

Needs the ``notebooks`` extra: ``pip install -e ".[notebooks]"``.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellControlSignal, DeadKernelError

HERE = Path(__file__).resolve().parent
#: ANSI colour codes in IPython tracebacks, removed for readable CI logs
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def children_cpu() -> float:
    """CPU seconds (user + system) used so far by this process's finished children (the kernels)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stored_outputs(nb: nbformat.NotebookNode) -> int:
    """Code cells of ``nb`` that hold outputs or an execution count (the repository keeps neither)."""
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    return sum(1 for cell in code if cell.get("outputs") or cell.get("execution_count"))


def run(path: Path, workdir: Path, timeout: int, output: Path | None) -> str | None:
    """Execute the notebook at ``path`` with ``workdir`` as its working directory; the error text, or None."""
    nb = nbformat.read(path, as_version=4)
    stored = stored_outputs(nb)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
    index = -1
    error: str | None = None
    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
    except (CellControlSignal, DeadKernelError) as exc:  # a cell raised or timed out, or the kernel died
        error = f"cell {index + 1} of {len(nb.cells)}: {ANSI.sub('', str(exc)).strip()}"
    if output is not None:
        nbformat.write(nb, output / path.name)
    if error is None and stored:
        error = (f"{stored} code cells hold stored outputs or execution counts: clear them before committing "
                 "(Jupyter: Edit > Clear Outputs of All Cells; or jupyter nbconvert --clear-output --inplace)")
    return error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run (default: every .ipynb in this folder); names are looked up here too")
    parser.add_argument("--timeout", type=int, default=600, help="seconds a single cell may run (default 600)")
    parser.add_argument("--output", type=Path, help="also write the executed notebooks into this folder")
    args = parser.parse_args(argv)

    paths = [p if p.exists() else HERE / p for p in args.notebooks] or sorted(HERE.glob("*.ipynb"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not paths:
        print(f"run_notebooks: no such notebook: {', '.join(missing)}" if missing else
              f"run_notebooks: no notebook in {HERE}", file=sys.stderr)
        return 2
    output = args.output.resolve() if args.output is not None else None
    if output is not None:
        if output == HERE:
            print("run_notebooks: --output must not be the notebooks' own folder (it keeps them output-free)",
                  file=sys.stderr)
            return 2
        output.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # quiets a debugger warning of ipykernel

    failures: list[str] = []
    total = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="robustkit-notebooks-") as tmp:
        for path in paths:
            workdir = Path(tmp) / path.stem
            workdir.mkdir()
            shutil.copy2(path, workdir / path.name)  # a copy beside the kernel, as if opened from there
            start, cpu = time.perf_counter(), children_cpu()
            error = run(workdir / path.name, workdir, args.timeout, output)
            seconds, kernel_cpu = time.perf_counter() - start, children_cpu() - cpu
            status = "ok" if error is None else "FAILED"
            print(f"{path.name}: {status} in {seconds:.1f} s (kernel CPU {kernel_cpu:.1f} s)", flush=True)
            if error is not None:
                failures.append(path.name)
                print(f"\n{path.name} failed: {error}\n", file=sys.stderr, flush=True)
    print(f"{len(paths) - len(failures)} of {len(paths)} notebooks ran in {time.perf_counter() - total:.1f} s")
    if failures:
        print(f"run_notebooks: failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
