"""The ``robustkit`` command: ``quickstart``, ``harden``, ``evaluate``, ``attack``.

Errors print one line and exit with status 2 (a traceback only with ``--debug``); argparse's own
usage errors exit with status 2 too. An unexpected internal error prints one line and exits with 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from robustkit._renamed import notice, renamed
from robustkit.errors import ConfigError, DiskFullError, RobustkitError
from robustkit.options import DomainOptions

if TYPE_CHECKING:
    from robustkit.config import RunConfig

__all__ = ["main"]

#: the commands that run on one domain (``robustkit COMMAND DOMAIN ...``), which take its option flags
RUN_COMMANDS = ("harden", "evaluate", "attack")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--batch-size", type=int, default=None, dest="batch_size", help="batch size (default: domain's)")
    p.add_argument("--force", action="store_true", help="overwrite a complete run directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _add_run_options(p: argparse.ArgumentParser, *, harden: bool, options: type[DomainOptions] | None) -> None:
    from robustkit.evaluation import PRESETS, describe_presets

    p.add_argument("domain", help="domain name (e.g. images, tabular, text); robustkit COMMAND DOMAIN --help lists "
                   "the domain's own flags")
    p.add_argument("--data", default=None, help="data spec, e.g. digits, mnist:DIR, csv:PATH (default: built-in)")
    p.add_argument("--config", default=None, help="YAML config (RUN/config.yaml reproduces a run); flags override it")
    p.add_argument("--out", default=None, help="run directory to write")
    p.add_argument(
        "--model-factory", default=None, metavar="MODULE:FUNCTION", dest="model_factory",
        help="your own model: a function that builds the nn.Module, called with the arguments it names among the "
        "domain's (images: channels, size, classes, mean, std; tabular: n_features, classes, schema, mean, std)",
    )
    p.add_argument(
        "--weights", default=None, metavar="FILE",
        help="safetensors weights for --model-factory's model (harden: starting weights; evaluate: the ones tested)",
    )
    p.add_argument(
        "--preset", default=None, choices=list(PRESETS),
        help="evaluation attacks (default standard):\n" + describe_presets().replace("%", "%%"),
    )
    if harden:
        p.add_argument(
            "--method", default=None,
            help="training method: standard, fgsm-mix, fast, pgd, trades, free, or the domain's own "
            "(text: discrete, random-edits; tabular: pgd+search); default: the domain's",
        )
        p.add_argument("--budget", type=float, default=None,
                       help="threat budget (an Lp ball's eps, a cost, words edited); default: the domain's")
        _add_budgets(p, "the domain's, up to --budget")
        p.add_argument("--epochs", type=int, default=None, help="training epochs")
        p.add_argument("--lr", type=float, default=None, help="learning rate")
        p.add_argument("--budget-warmup", type=float, default=None, dest="budget_warmup", metavar="EPOCHS",
                       help="epochs over which the training budget grows from 0 to --budget (default 0)")
        p.add_argument("--eps-warmup", type=float, default=None, dest="eps_warmup", help=argparse.SUPPRESS)
        p.add_argument("--resume", default=None, metavar="RUN", help="continue a stopped run from its checkpoints")
        p.add_argument(
            "--report-to", default=None, dest="report_to", choices=["none", "tensorboard", "mlflow"],
            help="experiment tracker for per-epoch figures, final metrics and the report: tensorboard (event files "
            "in RUN/tensorboard/) or mlflow (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME); needs robustkit[tracking]",
        )
        p.add_argument(
            "--keep-checkpoints", action="store_const", const=True, default=None, dest="keep_checkpoints",
            help="keep each model's last checkpoint (optimizer state) after the model is saved",
        )
        p.add_argument(
            "--model", default=None, metavar="MODEL",
            help="model to train, as the domain names it (sets options.model; text: hf:DIR, a local Hugging Face "
            "model folder to fine-tune)",
        )
    else:
        p.add_argument("--model", default=None, help="model folder or run directory (its hardened model)")
        # nargs "+": the first version took the list of budgets here (deprecated, see _budget_flags)
        p.add_argument("--budget", type=float, nargs="+", default=None,
                       help="threat budget to evaluate at, the main one (default: the domain's for the data)")
        _add_budgets(p, "the domain's; with --budget alone, that budget")
    _add_common(p)
    if options is not None:
        options.add_flags(p)


def _add_budgets(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--budgets", type=float, nargs="+", default=None, metavar="B",
                   help=f"budgets of the accuracy-vs-budget curve (default: {default})")
    p.add_argument("--eps", type=float, nargs="+", default=None, help=argparse.SUPPRESS)  # --budgets' old name


def _budget_flags(args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    """``budget`` and ``budgets`` from the flags, with the first version's names mapped to them (``say``
    takes the notice for each)."""
    budgets = renamed("--eps", args.eps, "--budgets", args.budgets, where="robustkit", say=say)
    if args.command == "harden":
        return {"budget": args.budget, "budgets": budgets}
    given = args.budget or []
    if len(given) > 1:  # the first version's list of budgets: the last was the main one
        if budgets is not None:
            raise ConfigError("give the budgets with --budgets only (--budget with several values is their "
                              "deprecated old form), not both")
        say(notice("--budget with several values", f"--budgets {' '.join(f'{b:g}' for b in given)}", "robustkit"))
        return {"budget": given[-1], "budgets": given}
    if not given:  # the largest of --budgets is the main one, as in rk.evaluate
        return {"budget": max(budgets) if budgets else None, "budgets": budgets}
    # one --budget alone evaluates that budget only, as it always did
    return {"budget": given[0], "budgets": budgets if budgets is not None else given}


class _Formatter(argparse.HelpFormatter):
    """Help text wrapped to the terminal, keeping the line breaks it was written with (one preset per line)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        # names such as APGD-DLR-100 stay whole
        return [part for line in text.splitlines()
                for part in textwrap.wrap(" ".join(line.split()), width, break_on_hyphens=False) or [""]]

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text
        return "\n".join(fill(line, width, indent) for line in text.splitlines())


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2), like every other robustkit error, and help text laid out
    as written."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # one line whatever the user typed: an argument may hold line or record separators
        self.exit(2, f"robustkit: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _parser(options: type[DomainOptions] | None = None) -> argparse.ArgumentParser:
    """The command line; ``options``: the named domain's options, whose flags join the run commands'."""
    parser = _Parser(prog="robustkit", description="Harden models against adversarial inputs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    quick = sub.add_parser(
        "quickstart",
        help="harden one model per domain on built-in data and compare each with a standard one",
        description="For each domain (images on the bundled 8x8 digits, tabular on synthetic card transactions, "
        "text on the demo spam corpus) train a standard and an adversarially trained model, evaluate both with "
        "the 'standard' attack preset and the gradient-masking checks, print one comparison table and write "
        "OUT/<domain>/ run directories and OUT/index.html linking their reports.",
    )
    quick.add_argument("--out", default="runs/quickstart", help="output folder (default: runs/quickstart)")
    quick.add_argument("--domains", default="images,tabular,text", metavar="LIST",
                       help="comma-separated domains to run (default: images,tabular,text)")
    _add_common(quick)
    _add_run_options(
        sub.add_parser("harden", help="train a standard and a hardened model, evaluate both, write a run directory"),
        harden=True, options=options,
    )
    _add_run_options(sub.add_parser("evaluate", help="evaluate a saved model under attack"), harden=False,
                     options=options)
    _add_run_options(sub.add_parser("attack", help="write adversarial versions of the test data"), harden=False,
                     options=options)
    return parser


def _domain_options(argv: list[str]) -> type[DomainOptions] | None:
    """The options class of the domain a run command names (its first positional argument), so that its flags
    can be parsed; None when there is none or it is unknown (the full parse then says what is wrong)."""
    if not argv or argv[0] not in RUN_COMMANDS:
        return None
    takes_values = {flag: action.nargs for action in _run_actions(argv[0]) for flag in action.option_strings
                    if action.nargs != 0}
    rest = list(argv[1:])
    while rest:
        token = rest.pop(0)
        if token in takes_values:  # skip its value, or (nargs "+") every value up to the next flag, as argparse does
            count = 1 if takes_values[token] is None else len(rest)
            while count and rest and not rest[0].startswith("-"):
                rest.pop(0)
                count -= 1
            continue
        if not token.startswith("-"):
            from robustkit.domain import get_domain

            try:
                return get_domain(token).Options
            except RobustkitError:
                return None
    return None


def _run_actions(command: str) -> list[argparse.Action]:
    """The arguments the run command ``command`` takes besides a domain's flags."""
    parser = argparse.ArgumentParser(add_help=False)
    _add_run_options(parser, harden=command == "harden", options=None)
    return parser._actions


def _run_config(args: argparse.Namespace, options_class: type[DomainOptions] | None) -> RunConfig:
    """The run's config: the ``--config`` file's, with the flags over it. Old flag and key names are said on
    standard error, one line each, once the config is valid (a refused command prints its error alone)."""
    from robustkit.config import RunConfig

    notices: list[str] = []
    with warnings.catch_warnings(record=True) as caught:  # a --config file's old keys
        warnings.simplefilter("always", DeprecationWarning)
        base = RunConfig.from_yaml(args.config) if args.config else RunConfig()
    for warning in caught:
        if issubclass(warning.category, DeprecationWarning):
            notices.append(f"robustkit: {warning.message}")
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    if base.model_factory is not None and base.model_factory != args.model_factory:
        raise ConfigError(
            f"{args.config} names model_factory {base.model_factory}: robustkit imports your code only when the "
            f"command line names it; add --model-factory {base.model_factory}"
        )
    overrides = {
        "domain": args.domain, "data": args.data, "preset": args.preset, "seed": args.seed, "device": args.device,
        "threads": args.threads, "batch_size": args.batch_size, "model_factory": args.model_factory,
        "weights": args.weights, **_budget_flags(args, notices.append),
    }
    if args.command == "harden":
        warmup = renamed("--eps-warmup", args.eps_warmup, "--budget-warmup", args.budget_warmup, where="robustkit",
                         say=notices.append)
        overrides.update(method=args.method, epochs=args.epochs, lr=args.lr, budget_warmup=warmup,
                         report_to=args.report_to, keep_checkpoints=args.keep_checkpoints)
    else:
        overrides.update(model=args.model)
    options = options_class.from_flags(args) if options_class is not None else {}
    if args.command == "harden" and args.model is not None:  # harden's --model names the model to train
        options["model"] = args.model
    if options:  # domain options the flags fill; the domain checks them (config.yaml keeps them)
        overrides["options"] = {**base.options, **options}
    config = base.merged(overrides)
    for line in notices:
        print(line, file=sys.stderr)
    return config


def _run_command(args: argparse.Namespace, argv: list[str], options_class: type[DomainOptions] | None) -> int:
    from robustkit import pipeline

    config = _run_config(args, options_class)
    resume = getattr(args, "resume", None)
    out = args.out or resume
    if not out:
        raise ConfigError("--out RUN is required (or --resume RUN to continue a stopped run)")
    if resume and args.out and Path(args.out) != Path(resume):
        raise ConfigError("--resume RUN continues RUN itself: drop --out or give the same folder")
    progress = not args.quiet and sys.stderr.isatty()
    if args.command == "harden":
        metrics = pipeline.harden(config, out, force=args.force, resume=bool(resume), progress=progress, argv=argv)
    elif args.command == "evaluate":
        metrics = pipeline.evaluate_model(config, out, force=args.force, progress=progress, argv=argv)
    else:
        metrics = pipeline.attack(config, out, force=args.force, progress=progress, argv=argv)
    from robustkit import distributed
    from robustkit.quickstart import summary_rows

    if not distributed.is_main():
        return 0
    for _, name, measure, clean, attacked, verdict in summary_rows(metrics):
        print(f"{name:10s} {measure:8s} clean {clean:6.1%}  under attack {attacked:6.1%}  {verdict}")
    print(f"run: {out}")
    return 0


def _quickstart(args: argparse.Namespace, argv: list[str]) -> int:
    """Harden one model per domain on built-in data and print standard vs hardened, clean vs attacked."""
    from robustkit import quickstart

    domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    # The built-in models are small: one thread beats two on 2 cores (the toy model runs 5x faster).
    threads = 1 if args.threads is None else args.threads
    runs = quickstart.run(args.out, domains, seed=args.seed or 0, device=args.device or "cpu", threads=threads,
                          batch_size=args.batch_size, force=args.force,
                          progress=not args.quiet and sys.stderr.isatty(), argv=argv)
    print()
    print(quickstart.format_table(runs))
    print(f"reports: {Path(args.out) / 'index.html'}")
    return 0


def _resume_hint(args: argparse.Namespace) -> str:
    """What to run after a Ctrl-C: the exact command that continues the stopped run, where there is one."""
    if args.command == "harden":
        run = args.resume or args.out
        return (f"the last finished epoch is saved; continue with: robustkit harden {args.domain} --resume {run}"
                if run else "nothing was written")
    if args.command == "quickstart":
        return (f"finished domains are kept; continue a stopped one with: robustkit harden DOMAIN --resume "
                f"{Path(args.out) / 'DOMAIN'}, or rerun the quickstart with --force")
    return "nothing is kept from an interrupted evaluation: rerun it with --force"


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (a message may quote a library's multi-line text)."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``robustkit`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    options_class = _domain_options(argv)
    parser = _parser(options_class)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (status 2) and --help (status 0)
        return int(exc.code or 0)
    from robustkit import distributed

    # under torchrun only rank 0 speaks (the others log warnings and errors)
    quiet = args.quiet or not distributed.is_main_by_environment()
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    try:
        status = _quickstart(args, argv) if args.command == "quickstart" else _run_command(args, argv, options_class)
        distributed.teardown()
        return status
    except (RobustkitError, OSError) as exc:
        if args.debug:
            raise
        hint = f"; {_resume_hint(args)}" if isinstance(exc, DiskFullError) else ""
        print(f"robustkit: error: {_one_line(exc)}{hint}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        print(f"robustkit: interrupted; {_resume_hint(args)}", file=sys.stderr)
        status = 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"robustkit: internal error: {type(exc).__name__}: {_one_line(exc)} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        status = 1
    distributed.teardown(wait=False)  # the other processes may have failed too: do not wait for them
    return status


if __name__ == "__main__":
    sys.exit(main())
