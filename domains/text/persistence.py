"""Saving and loading a fitted :class:`~domains.text.estimator.RobustSpamClassifier` without pickles.

A saved filter is a folder (:mod:`robustkit.saved`):

- ``classifier.json``: the parameters, the model's spec, the threshold, ``classes_`` / ``pos_label_``,
  the history, the dataset note and the SHA-256 of every other file (a file that does not match is
  refused before it is read);
- ``model.safetensors``: the weights;
- ``tokenizer.json``: the vocabulary the model was trained with (the ``tokenizers`` library's own JSON).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
from safetensors.torch import save_file
from tokenizers import Tokenizer

from domains.text import TOKENIZER_KEY, TextDataset, TextDomain
from domains.text.options import TextOptions
from robustkit.domain import DatasetInfo, DomainData
from robustkit.errors import ModelError
from robustkit.saved import (
    MANIFEST,
    check_json,
    classes_from,
    classes_meta,
    load_folder,
    method_config,
    method_from,
    module_state,
    read_weights,
    write_folder,
)

__all__ = ["load_classifier", "save_classifier"]

FORMAT = "robustkit.text.RobustSpamClassifier"
VERSION = 1


def save_classifier(clf: Any, path: str | Path) -> Path:
    """Write fitted ``clf`` to the folder ``path`` (replaced whole, atomically); every check runs first."""
    params = {k: v for k, v in clf.get_params(deep=False).items() if k not in ("method", "module")}
    if params["attack_tricks"] is not None:
        params["attack_tricks"] = list(params["attack_tricks"])
    data: DomainData = clf.data_
    options: TextOptions = data.raw["options"]  # as fit read them
    spec = clf.domain_.model_spec(data, options)
    tokenizer: Tokenizer = data.raw["tokenizer"]
    meta: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "params": params, "method": method_config(clf.method),
        "module": clf.module is not None,
        "spec": {k: v for k, v in spec.items() if k != TOKENIZER_KEY}, "threshold": float(clf.threshold_),
        **classes_meta(clf.classes_, clf.pos_label_), "history": clf.history_.to_dict(orient="list"),
        "data": {**data.info.to_dict(), "dim": int(data.raw["dim"]), "target_fpr": float(data.raw["target_fpr"]),
                 "options": options.to_dict()},
    }
    check_json(meta, "this classifier's parameters")
    state = module_state(clf.model_)
    return write_folder(path, meta, [lambda d: save_file(state, str(d / "model.safetensors")),
                                     lambda d: tokenizer.save(str(d / "tokenizer.json"))])


def load_classifier(cls: type, path: str | Path, module: Any = None) -> Any:
    """The classifier :func:`save_classifier` wrote to ``path``: every file checked against its SHA-256 first;
    ``module``: the ``module=`` it was trained with."""
    return load_folder(path, FORMAT, VERSION, "RobustSpamClassifier", module, partial(_build, cls))


def _build(cls: type, path: Path, meta: dict[str, Any], module: Any) -> Any:
    clf = cls(method=method_from(meta["method"]), module=module, **meta["params"])
    clf._check_params()
    try:
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    except Exception as exc:  # the tokenizers library raises bare Exceptions for files it cannot read
        raise ModelError(f"{path / 'tokenizer.json'} is not a tokenizer file ({str(exc)[:200]})") from None
    spec = dict(meta["spec"])
    if tokenizer.get_vocab_size() != int(spec["vocab_size"]):
        raise ModelError(f"{path}: the tokenizer has {tokenizer.get_vocab_size()} tokens but the model "
                         f"{spec['vocab_size']}: they do not belong together")
    domain = TextDomain()
    head = None if module is None else clf._head(int(spec["dim"]))
    model = domain.build_model({**spec, TOKENIZER_KEY: tokenizer.to_str()}, head)
    model.load_state_dict(read_weights(path / "model.safetensors"), strict=True)
    clf.threshold_ = float(meta["threshold"])
    if not (math.isfinite(clf.threshold_) and 0 <= clf.threshold_ <= 1):
        raise ModelError(f"{path / MANIFEST}: threshold {clf.threshold_} is not a probability")
    saved = meta["data"]
    info = DatasetInfo(str(saved["name"]), saved["sha256"], str(saved["split"]), n_classes=2,
                       class_names=list(domain.class_names))
    empty = TextDataset([], [], tokenizer, int(saved["dim"]))
    raw = {"tokenizer": tokenizer, "dim": int(saved["dim"]), "target_fpr": float(saved["target_fpr"]),
           "options": domain.parse_options(saved["options"])}
    clf.domain_, clf.data_, clf.model_ = domain, DomainData(empty, empty, empty, info, raw), model.eval()
    clf.classes_, clf.pos_label_ = classes_from(meta)
    clf.history_ = pd.DataFrame(meta["history"])
    clf.decided_ = domain.decided(clf.model_, clf.threshold_)
    return clf
