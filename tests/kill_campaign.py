"""Kill campaign: ``kill -9`` a ``robustkit harden`` run at random moments and check that nothing is lost.

Not a pytest test (CI runs it as its own step): ``python tests/kill_campaign.py --trials 12``; ``--domain``
(toy, images, tabular, text) picks the run, ``--signal TERM`` kills with SIGTERM instead of SIGKILL, and
``--full-disk`` adds step 4.

1. One uninterrupted reference run of the domain (built-in data, tiny settings, one thread, fixed seed),
   watched closely enough to time its phases: training, evaluation, writing.
2. ``--trials`` runs to fresh folders, each killed with the signal a random delay into a target phase (cycling
   through training, evaluation and writing; the phase actually hit is read from the files the run left).
   After every kill the folder must not look complete unless it is, every file under its final name must
   be whole (each one is parsed or loaded), the run must be marked incomplete (``harden`` without
   ``--resume`` refuses it), and ``harden --resume`` must finish it with exit 0 and the reference's
   ``metrics.json`` numbers, ``history.csv`` figures and model weights, all exactly. Every fourth trial
   kills the resume too and resumes again.
3. ``--force-trials`` complete runs (made with other settings) are overwritten with ``harden --force`` and
   killed: either the old complete run is still there intact, or the folder is marked incomplete and
   ``--resume`` finishes the new run with the reference's numbers; never an old ``metrics.json`` next to new
   files.

4. With ``--full-disk``, one run on a small tmpfs (60% of the reference run's bytes) must stop with "no space
   left on device" (exit 2), leave every file whole, and ``--resume`` must finish it with the reference's
   numbers once the tmpfs is enlarged. Skipped, with the reason, where mounting is not allowed.

Prints one row per trial and exits with status 1 on any failure (or if a phase was never hit).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: the run every trial repeats, per domain (``--domain``): built-in data, small enough for a busy 2-core machine
RUNS = {
    "toy": ["toy", "--epochs", "8", "--batch-size", "100", "--preset", "quick", "--budgets", "0.125", "0.25"],
    "images": ["images", "--data", "digits", "--epochs", "3", "--method", "fast", "--preset", "quick"],
    "tabular": ["tabular", "--epochs", "3", "--preset", "quick", "--config", str(ROOT / "tests" / "kill_tabular.yaml")],
    "text": ["text", "--data", "demo:160", "--epochs", "3", "--preset", "quick"],
}
#: the examples file compared with the reference's (every domain writes one; images and toy as tensors)
EXAMPLES = {"toy": "examples.safetensors", "images": "examples.safetensors", "tabular": "examples.csv",
            "text": "examples.csv"}
COMMON = ["--threads", "1", "--seed", "11"]
DOMAIN = "toy"
HARDEN = [*RUNS[DOMAIN], *COMMON]
#: the complete run a --force trial overwrites: other settings (seed, epochs), so a mix of old and new files would
#: show
OLD = [*RUNS["toy"], "--threads", "1", "--seed", "5", "--epochs", "2"]
#: the signal that kills (``--signal``): KILL, or TERM as a scheduler or ``docker stop`` sends
KILL_SIGNAL = signal.SIGKILL
MODELS = ("standard", "hardened")
PHASES = ("training", "evaluation", "writing")
#: where a kill is aimed: each step of a run, in order, and the log line that starts it (writing starts when
#: examples/ appears)
STEPS = {
    "training standard": "standard model: training with",
    "training hardened": "hardened model: training with",
    "evaluation standard": "standard model: evaluating",
    "evaluation hardened": "hardened model: evaluating",
    "writing": "<examples/ written>",
}
POLL = 0.005


# ----------------------------------------------------------------------------- one watched process
class Harden:
    """``robustkit harden ARGS`` in a subprocess, its log lines timed as they come."""

    def __init__(self, args: list[str], log: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.t0 = time.monotonic()
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "robustkit.cli", "harden", *args], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("a", encoding="utf-8") as fh:
            for line in self.proc.stdout:
                self.lines.append((self.now(), line.rstrip()))
                fh.write(line)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def seen(self, text: str) -> float | None:
        """When the first log line containing ``text`` came (seconds since start), or None."""
        return next((t for t, line in list(self.lines) if text in line), None)

    def kill(self) -> None:
        os.kill(self.proc.pid, KILL_SIGNAL)

    def wait(self) -> int:
        rc = self.proc.wait()
        self._reader.join()
        return rc

    def tail(self) -> str:
        return " | ".join(line for _, line in self.lines[-3:])


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def run_and_kill(args: list[str], run: Path, log: Path, target: str | None, delay: float) -> tuple[int, float | None]:
    """Run harden; SIGKILL it ``delay`` seconds after step ``target`` starts (a key of STEPS, or "start" for
    the process start; None: let it finish). Writing starts when ``examples/`` appears (or is replaced,
    when resuming), the other steps at their log line. Returns the exit status and when the kill was
    sent (seconds since start; None if the run ended first).
    """
    examples_before = _stamp(run / "examples")
    proc = Harden(args, log)
    start: float | None = None
    while proc.proc.poll() is None:
        if target is not None and start is None:
            if target == "start":
                start = 0.0
            elif target == "writing":
                now = _stamp(run / "examples")
                start = proc.now() if now is not None and now != examples_before else None
            else:
                start = proc.seen(STEPS[target])
        if start is not None and proc.now() - start >= delay:
            sent = proc.now()
            proc.kill()
            return proc.wait(), sent
        time.sleep(POLL)
    return proc.wait(), None


# ----------------------------------------------------------------------------- what a folder holds
def numbers(value: Any) -> Any:
    """metrics.json without wall-clock timings (keys ending in "seconds") and versions."""
    if isinstance(value, dict):
        return {k: numbers(v) for k, v in value.items() if not k.endswith("seconds") and k != "versions"}
    if isinstance(value, list):
        return [numbers(v) for v in value]
    return value


def phase_of(run: Path) -> str:
    """Which phase a stopped run was in, read from the files it left (written in this order)."""
    if (run / "metrics.json").exists():
        return "complete"
    if (run / "examples").exists():
        written = [n for n in ("history.csv", "report.md", "report.html") if (run / n).exists()]
        return "writing" + (f" (after {', '.join(written)})" if written else " (examples)")
    if (run / "models" / "hardened").exists():
        return "evaluation"
    if (run / "models" / "standard").exists():
        ckpt = _latest(run / "checkpoints" / "hardened")
        return f"training hardened (saved {ckpt or 'none'})"
    if (run / "config.yaml").exists():
        ckpt = _latest(run / "checkpoints" / "standard")
        return f"training standard (saved {ckpt or 'none'})"
    return "startup"


def _latest(folder: Path) -> str | None:
    try:
        return (folder / "latest").read_text().strip()
    except FileNotFoundError:
        return None


def broken_files(run: Path) -> list[str]:
    """Every file under its final name that is not whole (temporary names, starting with ".", are skipped)."""
    import pandas as pd
    import torch
    import yaml
    from safetensors.torch import load_file

    from robustkit.config import RunConfig

    problems = []
    for path in sorted(run.rglob("*")):
        rel = path.relative_to(run)
        if any(part.startswith(".") for part in rel.parts) or path.is_dir():
            continue
        try:
            name, text = path.name, None
            if path.suffix in (".json", ".yaml", ".csv", ".html", ".md") or name == "latest":
                text = path.read_text(encoding="utf-8")
            if path.suffix == ".json":
                json.loads(text or "")
            elif name == "config.yaml":
                assert RunConfig.from_yaml(path).to_yaml() == text, "config.yaml does not round-trip"
            elif path.suffix == ".yaml":
                yaml.safe_load(text or "")
            elif path.suffix == ".csv":
                assert text and text.endswith("\n"), "no final newline"
                pd.read_csv(path)
            elif name == "report.html":
                assert text and text.rstrip().endswith("</html>"), "no closing </html>"
            elif path.suffix == ".html":  # a domain's own page of examples (in examples/, written whole)
                assert text and text.lstrip().lower().startswith("<!doctype html>"), "not an HTML page"
            elif path.suffix == ".md":
                assert text and text.rstrip().splitlines()[-1].startswith("Versions: "), "no closing Versions line"
            elif path.suffix == ".safetensors":
                load_file(str(path))
            elif path.suffix == ".png":
                from PIL import Image

                with Image.open(path) as image:
                    image.load()
            elif path.suffix == ".pt":
                torch.load(path, map_location="cpu", weights_only=True)
            elif name == "latest":
                folder = path.parent / (text or "").strip()
                assert all((folder / f).is_file() for f in ("state.json", "model.safetensors", "trainer.pt")), (
                    f"names {folder.name}, which is not a whole checkpoint")
            else:
                problems.append(f"{rel}: unexpected file")
        except Exception as exc:  # any failure to read it back is the finding
            problems.append(f"{rel}: {type(exc).__name__}: {str(exc)[:80]}")
    # folders under their final names must be whole too (--resume trusts a model folder that exists)
    wholes: dict[str, tuple[str, ...]] = {f"models/{m}": ("model.json", "model.safetensors", "train.json")
                                          for m in MODELS}
    wholes |= {str(c.relative_to(run)): ("state.json", "model.safetensors", "trainer.pt")
               for c in run.glob("checkpoints/*/epoch-*")}
    wholes["examples"] = (EXAMPLES[DOMAIN],)
    for where, files in wholes.items():
        if (run / where).exists():
            missing = [f for f in files if not (run / where / f).is_file()]
            problems += [f"{where}: missing {', '.join(missing)}"] if missing else []
    return problems


def complete_problems(run: Path) -> list[str]:
    """What a run with metrics.json lacks of the run-directory contract."""
    needed = ["report.html", "report.md", "config.yaml", "history.csv"]
    needed += [f"models/{m}/{f}" for m in MODELS for f in ("model.json", "model.safetensors")]
    problems = [f"complete but {n} missing" for n in needed if not (run / n).is_file()]
    # a saved model's checkpoint is removed (the default, without --keep-checkpoints)
    problems += [f"complete but checkpoints/{m} kept" for m in MODELS if (run / "checkpoints" / m).exists()]
    if not (run / "examples").is_dir() or not any((run / "examples").iterdir()):
        problems.append("complete but examples/ empty")
    keys = {"schema_version", "domain", "dataset", "seed", "threat", "attacks", "models", "checks", "verdict"}
    try:
        missing = keys - set(json.loads((run / "metrics.json").read_text()))
        problems += [f"metrics.json lacks {k}" for k in sorted(missing)]
    except ValueError as exc:
        problems.append(f"metrics.json is not JSON: {exc}")
    return problems


@dataclass
class Snapshot:
    """What a finished run produced, timings aside."""

    metrics: Any
    history: list[dict[str, str]]  # as written (exact text), timing columns dropped
    tensors: dict[str, dict[str, Any]]  # the models' weights and the adversarial examples
    config: str
    examples: bytes = b""  # the examples file, where it is not tensors

    @classmethod
    def of(cls, run: Path) -> Snapshot:
        import pandas as pd
        from safetensors.torch import load_file

        history = pd.read_csv(run / "history.csv", dtype=str, keep_default_na=False)
        history = history[[c for c in history.columns if not c.endswith("seconds")]]
        examples = f"examples/{EXAMPLES[DOMAIN]}"
        files = [f"models/{m}/model.safetensors" for m in MODELS]
        files += [examples] if examples.endswith(".safetensors") else []
        return cls(numbers(json.loads((run / "metrics.json").read_text())), history.to_dict(orient="records"),
                   {f: load_file(str(run / f)) for f in files}, (run / "config.yaml").read_text(),
                   b"" if examples in files else (run / examples).read_bytes())

    def differences(self, other: Snapshot) -> list[str]:
        diffs = [name for name in ("metrics", "history", "config", "examples")
                 if getattr(self, name) != getattr(other, name)]
        for f, a in self.tensors.items():
            b = other.tensors[f]
            if a.keys() != b.keys() or any(not a[k].equal(b[k]) for k in a):
                diffs.append(f)
        return diffs


# ----------------------------------------------------------------------------- the campaign
@dataclass
class Trial:
    name: str
    target: str
    delay: float
    phase: str = ""
    kill_at: float | None = None
    resume_kill: str = "-"
    resumed: str = "-"
    equal: str = "-"
    problems: list[str] = field(default_factory=list)


@dataclass
class Reference:
    snapshot: Snapshot
    seconds: float
    windows: dict[str, float]  # how long each step of STEPS lasted ("start": until the first one)


def reference_run(work: Path) -> Reference:
    run = work / "reference"
    proc = Harden([*HARDEN, "--out", str(run)], work / "reference.log")
    seen: dict[str, float] = {}
    while proc.proc.poll() is None:
        for name in ("examples", "metrics.json"):
            if name not in seen and (run / name).exists():
                seen[name] = proc.now()
        time.sleep(POLL)
    rc, total = proc.wait(), proc.now()
    starts = [proc.seen(line) for step, line in STEPS.items() if step != "writing"]
    if rc != 0 or None in starts or set(seen) != {"examples", "metrics.json"}:
        raise SystemExit(f"kill campaign: the reference run failed (exit {rc}): {proc.tail()}")
    problems = complete_problems(run) + broken_files(run)
    if problems:
        raise SystemExit(f"kill campaign: the reference run is not a valid run directory: {problems}")
    times = [t for t in starts if t is not None] + [seen["examples"], seen["metrics.json"]]
    windows = {"start": times[0], **{step: b - a for step, a, b in zip(STEPS, times, times[1:], strict=False)}}
    return Reference(Snapshot.of(run), total, windows)


def check_stopped(run: Path, ref: Reference, trial: Trial, old: Snapshot | None = None) -> bool:
    """Check a killed run; True if it is complete (nothing to resume)."""
    from robustkit.errors import ConfigError
    from robustkit.pipeline import prepare_run_dir

    trial.problems += broken_files(run)
    if (run / "metrics.json").exists():
        trial.problems += complete_problems(run)
        diffs = Snapshot.of(run).differences(old or ref.snapshot) if not trial.problems else []
        trial.problems += [f"complete run differs from the {'old' if old else 'reference'} run in {d}" for d in diffs]
        return True
    if not (run / "config.yaml").exists():
        return False  # killed before the run was started: checked by the caller
    try:
        prepare_run_dir(run, force=False, resume=False)
        trial.problems.append("an incomplete run is not refused without --resume")
    except ConfigError as exc:
        if "--resume" not in str(exc):
            trial.problems.append(f"refused without naming --resume: {exc}")
    try:
        prepare_run_dir(run, force=False, resume=True)
    except ConfigError as exc:
        trial.problems.append(f"not resumable: {exc}")
    return False


def finish(run: Path, ref: Reference, trial: Trial, log: Path) -> None:
    """Resume (or, if the kill came before config.yaml, start again) and compare with the reference."""
    from robustkit.errors import ConfigError
    from robustkit.pipeline import prepare_run_dir

    if (run / "config.yaml").exists():
        args, how = [DOMAIN, "--resume", str(run)], "resume"
    else:  # killed before the run was set up: nothing to resume; start again as the refusal (if any) says
        args, how = [*HARDEN, "--out", str(run)], "restart"
        try:
            prepare_run_dir(run, force=False, resume=False)
        except ConfigError as exc:
            if "--force" not in str(exc):
                trial.problems.append(f"refused without saying how to start again: {exc}")
            args, how = [*args, "--force"], "restart --force"
    rc, _ = run_and_kill(args, run, log, None, 0.0)
    trial.resumed = f"{how} exit {rc}"
    if rc != 0:
        trial.problems.append(f"{how} exited with {rc}")
        return
    problems = complete_problems(run) + broken_files(run)
    trial.problems += problems
    if not problems:
        diffs = Snapshot.of(run).differences(ref.snapshot)
        trial.equal = "yes" if not diffs else "NO: " + ", ".join(diffs)
        trial.problems += [f"resumed run differs from the reference in {d}" for d in diffs]


def kill_trial(i: int, work: Path, ref: Reference, rng: random.Random) -> Trial:
    phase = PHASES[i % len(PHASES)]
    target = rng.choice([step for step in STEPS if step.startswith(phase)])
    trial = Trial(f"{i + 1}", target, rng.uniform(0.05, 0.7) * ref.windows[target])
    run, log = work / f"trial-{i + 1:02d}", work / f"trial-{i + 1:02d}.log"
    rc, trial.kill_at = run_and_kill([*HARDEN, "--out", str(run)], run, log, target, trial.delay)
    trial.phase = phase_of(run) if trial.kill_at is not None else f"none: the run ended first (exit {rc})"
    if trial.kill_at is None and rc != 0:
        trial.problems.append(f"the run failed by itself (exit {rc})")
    if check_stopped(run, ref, trial):
        return trial
    if i % 4 == 3:  # kill the resume too, at a random moment of what is left
        ahead = [s for s in STEPS if not s.startswith("training") or not (run / "models" / s.split()[1]).exists()]
        second = rng.choice(ahead)
        rc, sent = run_and_kill([DOMAIN, "--resume", str(run)], run, log, second,
                                rng.uniform(0.05, 0.7) * ref.windows[second])
        trial.resume_kill = f"{second} -> {phase_of(run)}" if sent is not None else f"{second}: ended first ({rc})"
        if check_stopped(run, ref, trial):
            trial.resumed = "complete after 1st resume"
            trial.equal = "yes" if not trial.problems else "NO"
            return trial
    finish(run, ref, trial, log)
    return trial


def force_trials(n: int, work: Path, ref: Reference, rng: random.Random) -> list[Trial]:
    """Overwrite a complete run with --force, kill it, and check the old run or the new one survives."""
    if n <= 0:
        return []
    template = work / "old-run"
    rc, _ = run_and_kill([*OLD, "--out", str(template)], template, work / "old-run.log", None, 0.0)
    if rc != 0:
        raise SystemExit(f"kill campaign: the run to overwrite failed (exit {rc})")
    old = Snapshot.of(template)
    trials = []
    for k in range(n):
        # alternate: early kills (while importing and loading data, before the old run is cleared) and kills
        # in the new run's work
        target = "start" if k % 2 == 0 else rng.choice(list(STEPS))
        delay = rng.uniform(0.2, 0.6 if target == "start" else 0.7) * ref.windows[target]
        trial = Trial(f"force-{k + 1}", f"--force {target}", delay)
        run, log = work / f"force-{k + 1}", work / f"force-{k + 1}.log"
        shutil.copytree(template, run)
        rc, trial.kill_at = run_and_kill([*HARDEN, "--out", str(run), "--force"], run, log, target, delay)
        trial.phase = phase_of(run) if trial.kill_at is not None else f"none: the run ended first (exit {rc})"
        trials.append(trial)
        if (run / "metrics.json").exists():
            is_old = (run / "config.yaml").read_text() == old.config
            check_stopped(run, ref, trial, old if is_old else None)
            trial.resumed, trial.equal = ("old run intact", "old") if is_old else ("new run complete", "yes")
            trial.phase = "before clearing (old run complete)" if is_old else trial.phase
            if trial.problems:
                trial.equal = "NO"
        elif not check_stopped(run, ref, trial):
            finish(run, ref, trial, log)
    return trials


def _run_bytes(run: Path) -> int:
    return sum(p.stat().st_size for p in run.rglob("*") if p.is_file())


def full_disk_trial(work: Path, ref: Reference) -> Trial | str:
    """Run harden on a small tmpfs that fills up midway: it must stop with "no space left on device", leave every
    file whole, and ``--resume`` must finish it with the reference's numbers once the disk has room. Returns the
    trial, or why it was skipped (mounting needs the right to mount)."""
    disk = work / "small-disk"
    disk.mkdir()
    size = max(64 * 1024, int(_run_bytes(work / "reference") * 0.6)) // 4096 * 4096
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        return f"full-disk trial skipped: cannot mount a tmpfs ({(mounted.stderr or mounted.stdout).strip()})"
    trial = Trial("full-disk", f"tmpfs of {size // 1024} KiB", 0.0)
    try:
        run, log = disk / "run", work / "full-disk.log"
        rc, _ = run_and_kill([*HARDEN, "--out", str(run)], run, log, None, 0.0)
        said = "no space left on device" in log.read_text(encoding="utf-8")
        trial.phase = phase_of(run)
        if rc != 2 or not said:
            trial.problems.append(f"a full disk gave exit {rc}{'' if said else ' without no space left on device'}")
        check_stopped(run, ref, trial)
        subprocess.run(["mount", "-o", f"remount,size={size * 8}", str(disk)], check=True)
        finish(run, ref, trial, log)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    return trial


def _table(trials: list[Trial]) -> str:
    head = ("trial", "target", "delay s", "killed at s", "phase hit", "resume killed", "resume", "equal?")
    rows = [head] + [
        (t.name, t.target, f"{t.delay:.2f}", "-" if t.kill_at is None else f"{t.kill_at:.2f}", t.phase,
         t.resume_kill, t.resumed, t.equal)
        for t in trials
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=12, help="harden runs to kill (default 12, at least 3)")
    parser.add_argument("--force-trials", type=int, default=2, dest="force_trials",
                        help="complete runs to overwrite with --force and kill (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays (default 0)")
    parser.add_argument("--workdir", default=None, help="where to put the runs (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the runs after a successful campaign")
    parser.add_argument("--domain", default="toy", choices=sorted(RUNS), help="the domain whose run is killed")
    parser.add_argument("--signal", default="KILL", choices=["KILL", "TERM"], help="the signal sent (default KILL)")
    parser.add_argument("--full-disk", action="store_true", dest="full_disk",
                        help="also fill a small tmpfs midway through a run (skipped where mounting is not allowed)")
    args = parser.parse_args(argv)
    global DOMAIN, HARDEN, OLD, KILL_SIGNAL
    DOMAIN, KILL_SIGNAL = args.domain, getattr(signal, f"SIG{args.signal}")
    HARDEN = [*RUNS[DOMAIN], *COMMON]
    OLD = [*RUNS[DOMAIN], "--threads", "1", "--seed", "5", "--epochs", "2"]
    if args.trials < len(PHASES):
        parser.error(f"--trials must be at least {len(PHASES)}, one per phase")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kill-campaign-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    began = time.monotonic()
    ref = reference_run(work)
    print(f"reference run: {ref.seconds:.1f} s; phases "
          + ", ".join(f"{k} {v:.2f} s" for k, v in ref.windows.items()), flush=True)
    trials = []
    for i in range(args.trials):
        trials.append(kill_trial(i, work, ref, rng))
        t = trials[-1]
        print(f"trial {t.name}: {t.target} +{t.delay:.2f} s -> {t.phase}; {t.resumed}; equal {t.equal}", flush=True)
    trials += force_trials(args.force_trials, work, ref, rng)
    if args.full_disk:
        disk = full_disk_trial(work, ref)
        if isinstance(disk, str):
            print(disk)
        else:
            trials.append(disk)
    print()
    print(_table(trials))
    failures = [f"trial {t.name}: {p}" for t in trials for p in t.problems]
    hits = {p: sum(t.phase.startswith(p) for t in trials) for p in (*PHASES, "before clearing", "complete", "none")}
    failures += [f"no kill landed in {p}" for p in PHASES if not hits[p]]
    print(f"\n{len(trials)} trials ({args.trials} runs killed with SIG{args.signal}, {args.force_trials} --force "
          f"overwrites{', a full disk' if any(t.name == 'full-disk' for t in trials) else ''}, {DOMAIN}) in "
          f"{time.monotonic() - began:.0f} s; phases hit: " + ", ".join(f"{p} {n}" for p, n in hits.items() if n))
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        print(f"runs kept in {work}")
        return 1
    print("every killed run was either intact or resumed to the reference's exact numbers")
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
