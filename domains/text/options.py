"""The text domain's options (``options:`` in a config file; some are flags of ``robustkit harden text``).

Example:
    >>> from domains.text.options import TextOptions
    >>> TextOptions.parse({"normalise": True, "attack_tricks": ["leet", "swap"]}, "text").attack_tricks
    ['leet', 'swap']
    >>> TextOptions.parse({"max_edited_share": 2}, "text")
    Traceback (most recent call last):
    ...
    robustkit.errors.ConfigError: options.max_edited_share must be a number in (0, 1], got 2
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustkit.options import DomainOptions, option

from .obfuscation import TRICKS

__all__ = ["TextOptions"]

_POSITIVE = "a positive integer"


def _hf_folder(value: str) -> bool:
    return value == "cnn" or (value.startswith("hf:") and bool(value[3:].strip()))


@dataclass(frozen=True)
class TextOptions(DomainOptions):
    """What a text run may set besides the core settings (see :mod:`domains.text`)."""

    text_column: str = option("text", "file data: the column of texts", flag="--text-column", check=bool,
                              must="a column name")
    label_column: str | None = option(None, "file data: the column of labels (default: label)", check=bool,
                                      must="a column name")
    target: str | None = option(None, "file data: the column of labels (as label_column)", flag="--target",
                                check=bool, must="a column name")
    label_names: list[str] = option(["ham", "spam"], "file data: the two labels, [HAM, SPAM] (0 and 1 always work)",
                                    check=lambda v: len(v) == 2, must="two distinct names, [HAM, SPAM]")
    dim: int = option(32, "embedding size of the built-in model", check=lambda v: v > 0, must=_POSITIVE)
    vocab_size: int | None = option(None, "WordPiece vocabulary of the built-in model (default: the data's)",
                                    check=lambda v: v > 0, must=_POSITIVE)
    channels: int = option(64, "convolution channels of the built-in model", check=lambda v: v > 0, must=_POSITIVE)
    attack_tricks: list[str] | None = option(
        None, "the obfuscation tricks attacks may use (default all), e.g. [leet, insert, swap, delete]",
        check=lambda v: bool(v) and set(v) <= set(TRICKS), must=f"a list of tricks among {', '.join(TRICKS)}")
    max_edited_share: float | None = option(None, "cap on edits as a share of each text's words, at least one",
                                            flag="--max-edited-share", check=lambda v: 0 < v <= 1,
                                            must="a number in (0, 1]")
    normalise: bool = option(False, "undo homoglyphs, invisible characters and separator tricks before the model "
                             "reads a text", flag="--normalise")
    embedding_eps: float = option(0.1, "radius of the training ball on token embeddings (share of the mean norm)",
                                  check=lambda v: v > 0, must="a number > 0")
    target_fpr: float = option(0.01, "false-positive rate on validation ham that sets the operating threshold",
                               flag="--target-fpr", check=lambda v: 0 < v < 0.5, must="a number between 0 and 0.5")
    model: str | None = option(None, "cnn (the built-in model) or hf:DIR, a local Hugging Face model to fine-tune",
                               check=_hf_folder, must="'cnn' or 'hf:DIR' (a local Hugging Face model folder)")

    def hf_folder(self) -> Path | None:
        """The Hugging Face model folder ``model: hf:DIR`` names; None for the built-in model."""
        if self.model is None or self.model == "cnn":
            return None
        return Path(self.model[3:].strip()).expanduser()

    def columns(self) -> dict[str, Any]:
        """The column settings a table file is read with."""
        return {"text_column": self.text_column, "label_column": self.label_column or self.target or "label",
                "label_names": self.label_names}
