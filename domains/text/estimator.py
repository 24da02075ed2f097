"""A scikit-learn spam classifier for raw texts, hardened against the obfuscations spammers use.

:class:`RobustSpamClassifier` is the notebook's one-call entry to the text domain: ``fit`` takes a
list of strings and their labels, trains a tokenizer and the built-in embeddings + CNN model
(:class:`~domains.text.model.TextCNN`) through :class:`robustkit.AdversarialTrainer` (by default with
the domain's ``discrete`` method: spam obfuscated against the current model every epoch), and decides
at the threshold that flags ``target_fpr`` of the validation ham. ``evaluate`` reports spam recall on
clean texts and under the obfuscation attacks ``robustkit harden text`` reports (the gradient-guided
search with restarts, then the black-box query search on what it left).

Labels: two classes; ``pos_label`` names spam (default: 1, True or "spam"; any other pair of labels is
refused rather than guessed). ``classes_`` is sorted as in scikit-learn, ``pos_label_`` is spam, the
class a spammer wants to leave, and ``predict_proba``'s columns follow ``classes_``. A fitted
classifier keeps no training text: its ``data_`` holds the tokenizer and a digest of the data.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from domains.text import TextDomain
from domains.text.data import TextSource
from domains.text.obfuscation import TRICKS, ObfuscationSpace, edit_cost
from robustkit.attacks import DiscreteSearch, Ensemble
from robustkit.errors import ConfigError, DataError
from robustkit.evaluation.binary import binary_labels, decide, known_positive, sample_weights, two_columns
from robustkit.evaluation.presets import PRESETS
from robustkit.factory import own_module
from robustkit.models import frozen_eval, logits_of
from robustkit.training import methods as methods_mod
from robustkit.training.callbacks import EpochLog, check_verbose
from robustkit.training.fit import TrainSettings, fit_model

__all__ = ["RobustSpamClassifier"]


class RobustSpamClassifier(ClassifierMixin, BaseEstimator):
    """Spam filter on raw texts, hardened against obfuscation (see the module docstring).

    Args:
        method: ``discrete`` (obfuscated spam searched against the model every epoch, the default),
            ``random-edits`` (its control), ``standard``, or a core method on the embeddings
            (``pgd``, ``trades``, ``fast``, ``free``, or a configured ``robustkit.methods`` object).
        budget: edited or inserted words per spam text, in training and by default in ``evaluate``.
        max_edited_share: also cap the edits at this share of each text's words (at least one).
        attack_tricks: the obfuscation tricks attacks may use (default all of ``TRICKS``).
        normalise: put the defensive normaliser (homoglyphs, invisible characters, separators) in front
            of the model.
        epochs, batch_size, lr: training length, batch size and Adam learning rate.
        dim, channels: the model's embedding size and convolution width.
        target_fpr: share of the validation ham flagged at the operating threshold.
        random_state: seed of the split, the weights, the data order and the attacks (None: random).
        verbose: show progress bars and one line per epoch (loss, validation clean and robust
            accuracy, seconds, time left) on standard error.
        validation_fraction: share of the texts held out for the threshold and the best-epoch choice.
        pos_label: the label of spam (default: 1, True or "spam"; other labels need it).
        module: your own ``torch.nn.Module`` to train after the embedding table instead of the built-in
            CNN, or a function (a class too) of the embedding size ``dim`` returning one. It is called as
            ``module(embeddings, mask)``: the token embeddings ``(N, L, dim)`` (zero at padding) and a bool
            mask ``(N, L)`` (True at tokens), and returns ``(N, 2)`` logits (ham, spam). The embedding table
            trains with it and attacks move the embeddings as for the built-in model. An instance is
            trained as a copy; a factory is called at each ``fit``. Checked on one batch before training.

    Example:
        >>> from domains.text.data import demo_corpus
        >>> texts, labels = demo_corpus(200, seed=0)
        >>> clf = RobustSpamClassifier(epochs=3).fit(texts, labels)
        >>> clf.predict_proba(texts[:2]).shape, clf.classes_.tolist(), 0 < clf.threshold_ < 1
        ((2, 2), [0, 1], True)
        >>> sorted(clf.evaluate(texts[:40], labels[:40]))
        ['attack_success_rate', 'budget', 'n_spam', 'recall_attacked', 'recall_clean', 'words_edited']
        >>> len(clf.data_.train), len(clf.data_.test)  # no training text is kept
        (0, 0)
    """

    def __init__(
        self,
        method: Any = "discrete",
        budget: float = 3.0,
        max_edited_share: float | None = None,
        attack_tricks: Sequence[str] | None = None,
        normalise: bool = False,
        epochs: int = 6,
        batch_size: int = 32,
        lr: float = 3e-3,
        dim: int = 32,
        channels: int = 64,
        target_fpr: float = 0.01,
        random_state: int | None = 0,
        validation_fraction: float = 0.2,
        pos_label: Any = None,
        verbose: bool | int = False,
        module: Any = None,
    ) -> None:
        self.method = method
        self.budget = budget
        self.max_edited_share = max_edited_share
        self.attack_tricks = attack_tricks
        self.normalise = normalise
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.dim = dim
        self.channels = channels
        self.target_fpr = target_fpr
        self.random_state = random_state
        self.validation_fraction = validation_fraction
        self.pos_label = pos_label
        self.verbose = verbose
        self.module = module

    def __sklearn_tags__(self) -> Any:
        # X is a list (or 1-D array) of texts, never a 2-D array of numbers: scikit-learn's checks feed
        # 2-D arrays, so it runs none of its data checks (see tests/test_sklearn_checks.py for those run instead)
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.one_d_array = True
        tags.input_tags.string = True
        tags.classifier_tags.multi_class = False
        return tags

    # ----------------------------------------------------------------- checks
    def _options(self) -> dict[str, Any]:
        """The text domain's options for these parameters."""
        options: dict[str, Any] = {"dim": self.dim, "channels": self.channels, "normalise": self.normalise,
                                   "target_fpr": self.target_fpr}
        if self.max_edited_share is not None:
            options["max_edited_share"] = self.max_edited_share
        if self.attack_tricks is not None:
            options["attack_tricks"] = list(self.attack_tricks)
        return options

    def _check_params(self) -> None:
        domain_methods = tuple(TextDomain.methods)
        if isinstance(self.method, str) and self.method not in domain_methods:
            methods_mod.get(self.method)  # a ConfigError naming the known methods if unknown
        elif not isinstance(self.method, str | methods_mod.Method):
            raise ConfigError(f"method must be a name or a robustkit.methods object, got {self.method!r}")
        for name in ("epochs", "batch_size", "dim", "channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, int | float) or self.budget < 1:
            raise ConfigError(f"budget must be at least 1 edited word, got {self.budget!r}")
        if not isinstance(self.lr, int | float) or not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        for name in ("target_fpr", "validation_fraction"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value < 1):
                raise ConfigError(f"{name} must lie strictly between 0 and 1, got {value!r}")
        if self.random_state is not None and (isinstance(self.random_state, bool)
                                              or not isinstance(self.random_state, int | np.integer)):
            raise ConfigError(f"random_state must be an integer or None, got {self.random_state!r}")
        check_verbose(self.verbose)
        if self.module is not None and not (isinstance(self.module, nn.Module) or callable(self.module)):
            raise ConfigError(f"module must be a torch.nn.Module or a function of the embedding size returning one, "
                              f"got {type(self.module).__name__}")
        if isinstance(self.attack_tricks, str):
            raise ConfigError(f"attack_tricks must be a list of tricks among {', '.join(TRICKS)}, "
                              f"got the string {self.attack_tricks!r}")
        TextDomain().parse_options(self._options())

    @staticmethod
    def _texts(X: Any) -> list[str]:
        """``X`` as a list of non-empty strings."""
        if sparse.issparse(X):
            raise DataError("Sparse data was passed for X, but texts are required: pass the raw strings (a list, "
                            "array or Series), not their vectorised counts")
        if isinstance(X, str) or not isinstance(X, Sequence | np.ndarray | pd.Series):
            raise DataError(f"X must be a list (or array or Series) of texts, got {type(X).__name__}")
        texts = list(X)
        if not texts:
            raise DataError("Found X with 0 texts while a minimum of 1 is required")
        wrong = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if wrong:
            raise DataError(f"X holds {len(wrong)} values that are not strings (first at position {wrong[0]}: "
                            f"{texts[wrong[0]]!r}): pass texts")
        empty = [i for i, t in enumerate(texts) if not t.strip()]
        if empty:
            raise DataError(f"X holds {len(empty)} empty texts (first at position {empty[0]}): drop them")
        return texts

    # ----------------------------------------------------------------- training
    def fit(self, X: Sequence[str], y: Any, sample_weight: Any = None) -> RobustSpamClassifier:
        """Train on texts ``X`` and binary labels ``y``; every check runs before training.

        ``sample_weight`` (one weight >= 0 per text) weights each training text's loss; a text of
        weight 0 trains as if left out. Validation texts (the threshold) are not weighted.
        """
        self._check_params()
        texts = self._texts(X)
        labels, classes, positive = binary_labels(y, len(texts), ("ham", "spam"), what="texts",
                                                  pos_label=self.pos_label)
        weights = sample_weights(sample_weight, len(texts), "texts")
        n_ham = int((labels == 0).sum())
        if round(n_ham * (1 - float(self.validation_fraction))) >= n_ham:  # as the stratified split rounds
            raise DataError(f"validation_fraction={self.validation_fraction} of {n_ham} ham texts holds none out: "
                            "the threshold needs validation ham; pass more texts or a larger fraction")
        seed = int(np.random.default_rng().integers(2**31)) if self.random_state is None else int(self.random_state)
        sha = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()
        source = TextSource(texts, labels.tolist(), "fit", sha, ["passed to RobustSpamClassifier.fit"])
        domain = TextDomain()
        options = domain.parse_options(self._options())
        data = domain.data_from(source, seed, options, fractions=(1 - float(self.validation_fraction), 1.0),
                              sample_weight=None if weights is None else weights.tolist())
        torch.manual_seed(seed)
        spec = domain.model_spec(data, options)
        model = domain.build_model(spec, None if self.module is None else self._head(int(spec["dim"])))
        method = copy.deepcopy(self.method) if isinstance(self.method, methods_mod.Method) else self.method
        fitted = fit_model(domain, data, model, TrainSettings(
            method=method, budget=float(self.budget), epochs=int(self.epochs), batch_size=int(self.batch_size),
            lr=float(self.lr), seed=seed, progress=bool(self.verbose),
            callbacks=(EpochLog(type(self).__name__),) if self.verbose else ()))
        threshold = fitted.threshold
        assert threshold is not None
        self.domain_ = domain
        self.data_ = data.digest()
        self.model_ = model
        self.classes_ = classes
        self.pos_label_ = positive
        self.history_ = pd.DataFrame(fitted.history)
        self.threshold_ = float(threshold)
        self.decided_ = domain.decided(model, self.threshold_)
        return self

    def _head(self, dim: int) -> nn.Module:
        """The user's ``module``, checked on two texts' embeddings (one padded) before any training."""
        mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
        example = torch.randn(2, 5, dim, generator=torch.Generator().manual_seed(0)) * mask.unsqueeze(-1)
        contract = (f"module(embeddings, mask): embeddings (N, L, {dim}) floats (zero at padding) and mask (N, L) "
                    "bools (True at tokens), and return (N, 2) logits (ham, spam)")
        return own_module(self.module, dim, (example, mask), contract)

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write the fitted filter to the folder ``path`` without pickles (replaced whole, atomically):
        safetensors weights, the tokenizer's JSON and the rest in JSON (:mod:`domains.text.persistence`).
        Returns ``path``."""
        check_is_fitted(self, "model_")
        from domains.text.persistence import save_classifier  # it builds this class: imported when used

        return save_classifier(self, path)

    @classmethod
    def load(cls, path: str | Path, module: Any = None) -> RobustSpamClassifier:
        """The filter :meth:`save` wrote to ``path``; a changed, missing or extra file or a pickle is refused
        (:class:`~robustkit.errors.ModelError`) before anything is loaded. A filter trained with
        ``module=`` needs the same ``module`` again (its code is never saved).

        Example:
            >>> import tempfile
            >>> from domains.text.data import demo_corpus
            >>> texts, labels = demo_corpus(120, seed=0)
            >>> clf = RobustSpamClassifier(method="standard", epochs=1).fit(texts, labels)
            >>> with tempfile.TemporaryDirectory() as d:
            ...     again = RobustSpamClassifier.load(clf.save(f"{d}/filter"))
            >>> bool((again.predict_proba(texts) == clf.predict_proba(texts)).all())
            True
        """
        from domains.text.persistence import load_classifier

        loaded: RobustSpamClassifier = load_classifier(cls, path, module)
        return loaded

    # ----------------------------------------------------------------- prediction
    def _space(self, budget: float | None = None) -> ObfuscationSpace:
        space = self.domain_.eval_space(self.budget if budget is None else float(budget), self.data_, self.model_)
        assert isinstance(space, ObfuscationSpace)
        return space

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        """``(n, 2)`` probabilities in ``classes_`` order (the column of ``pos_label_``: spam)."""
        check_is_fitted(self, "model_")
        return two_columns(self._spam_scores(self._texts(X)), self.classes_, self.pos_label_)

    def _spam_scores(self, texts: list[str]) -> np.ndarray:
        with frozen_eval(self.model_), torch.no_grad():
            logits = logits_of(self.model_(self._space().encode(texts)))
        return torch.softmax(logits.double(), dim=1)[:, 1].numpy()

    def predict(self, X: Sequence[str]) -> np.ndarray:
        """``pos_label_`` (spam) where P(spam) >= ``threshold_``, else the other class."""
        check_is_fitted(self, "model_")
        return decide(self._spam_scores(self._texts(X)) >= self.threshold_, self.classes_, self.pos_label_)

    # ----------------------------------------------------------------- attacks
    def attack(self, X: Sequence[str], budget: float | None = None,
               candidates_per_step: int = 8) -> tuple[list[str], pd.DataFrame]:
        """Each text obfuscated towards ham at the operating threshold, within ``budget`` edited words.

        The attack is the ``standard`` evaluation preset's over the obfuscation space: the gradient-guided
        search (``candidates_per_step``, with restarts) and then, on what it left, the black-box query search.
        Returns the texts (unchanged where the search found nothing) and per text ``words_edited``,
        ``flagged_clean`` and ``flagged_attacked`` (a fresh prediction on the returned text).
        """
        check_is_fitted(self, "model_")
        texts = self._texts(X)
        space = self._space(budget)
        decided = self.decided_
        seed = int(self.random_state or 0)
        first, *rest = PRESETS["standard"].attacks_for(2, discrete=True)
        search = Ensemble([DiscreteSearch(space, **{**first.options, "candidates_per_step": candidates_per_step},
                                          seed=seed), *(spec.build(space, seed) for spec in rest)])
        with frozen_eval(decided):
            result = search(decided, texts, torch.ones(len(texts), dtype=torch.long))
        adversarial = [str(t) for t in result.x_adv]
        info = pd.DataFrame({
            "words_edited": [edit_cost(o, a) for o, a in zip(texts, adversarial, strict=True)],
            "flagged_clean": self._spam_scores(texts) >= self.threshold_,
            "flagged_attacked": self._spam_scores(adversarial) >= self.threshold_,
        })
        return adversarial, info

    def evaluate(self, X: Sequence[str], y: Any, budget: float | None = None) -> dict[str, Any]:
        """Spam recall on clean texts and under the obfuscation search (only spam is attacked).

        ``words_edited`` is the mean number of words the search edited where it turned a detected
        spam into ham; ``attack_success_rate`` is the share of detected spam it turned.
        """
        check_is_fitted(self, "model_")
        texts = self._texts(X)
        positive = known_positive(y, len(texts), self.classes_, self.pos_label_, "texts")
        spam = [t for t, p in zip(texts, positive.tolist(), strict=True) if p]
        info = self.attack(spam, budget)[1] if spam else pd.DataFrame(
            {"words_edited": [], "flagged_clean": [], "flagged_attacked": []})
        clean = info["flagged_clean"].to_numpy(dtype=bool)
        attacked = clean & info["flagged_attacked"].to_numpy(dtype=bool)
        turned = clean & ~attacked
        n = len(clean)
        return {
            "n_spam": n,
            "budget": float(self.budget if budget is None else budget),
            "recall_clean": float(clean.mean()) if n else 0.0,
            "recall_attacked": float(attacked.mean()) if n else 0.0,
            "attack_success_rate": float(turned.sum() / max(1, clean.sum())),
            "words_edited": float(info["words_edited"].to_numpy()[turned].mean()) if turned.any() else 0.0,
        }
