"""A smaller toy domain registered from the tests, to prove the registry and keep pipeline tests fast."""

from __future__ import annotations

from typing import ClassVar

import robustkit as rk
from domains.toy import ToyDomain


class SmallToyDomain(ToyDomain):
    name = "toy-small"
    default_epochs = 6
    default_batch_size = 60
    sizes: ClassVar[tuple[int, int, int]] = (600, 200, 200)


rk.register_domain(SmallToyDomain)
