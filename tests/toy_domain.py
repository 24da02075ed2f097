"""A smaller toy domain registered from the tests, to prove the registry and keep pipeline tests fast."""

from __future__ import annotations

from typing import ClassVar

from torch.utils.data import TensorDataset

import robustkit as rk
from domains.toy import ToyDomain, ToyOptions


class SmallToyDomain(ToyDomain):
    name = "toy-small"
    default_epochs = 6
    default_batch_size = 60
    sizes: ClassVar[tuple[int, int, int]] = (600, 200, 200)


class NarrowToyDomain(SmallToyDomain):
    """The same problem with fewer features: a toy-small model does not fit its data."""

    name = "toy-narrow"

    def load_data(self, spec: str, seed: int, options: ToyOptions) -> rk.DomainData:
        data = super().load_data(spec, seed, options)
        narrow = [TensorDataset(part.tensors[0][:, :66], part.tensors[1]) for part in (data.train, data.val, data.test)]
        return rk.DomainData(narrow[0], narrow[1], narrow[2], data.info)


rk.register_domain(SmallToyDomain)
rk.register_domain(NarrowToyDomain)
