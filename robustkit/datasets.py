"""Built-in synthetic problems that need no download.

:func:`robust_nonrobust` follows the construction of Tsipras et al. (2019): a few *robust* features
that predict the class well but not perfectly and far apart from each other, and many *non-robust*
features, each only weakly correlated with the class, that together predict it almost perfectly but
that an L-infinity perturbation of size ``eps`` can turn towards another class. A standard model
leans on the non-robust features and breaks under attack; an adversarially trained one learns to
rely on the robust ones.

Example:
    >>> import robustkit as rk
    >>> x, y = rk.datasets.robust_nonrobust(100, seed=0)
    >>> tuple(x.shape), int(y.max())
    ((100, 130), 2)
"""

from __future__ import annotations

import math

import torch

from robustkit.errors import ConfigError

__all__ = ["TOY_BOUNDS", "TOY_EPS", "robust_nonrobust"]

#: Box that holds every feature of :func:`robust_nonrobust`.
TOY_BOUNDS = (-4.0, 4.0)
#: The L-infinity budget the toy problem is built for (larger than the non-robust signal ``eta``).
TOY_EPS = 0.25


def robust_nonrobust(
    n: int,
    *,
    n_classes: int = 3,
    n_nonrobust: int = 128,
    eta: float = 0.2,
    radius: float = 1.5,
    noise: float = 0.9,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` examples with 2 robust and ``n_nonrobust`` non-robust features, clipped to :data:`TOY_BOUNDS`.

    Args:
        n: number of examples.
        n_classes: number of classes (>= 2), balanced.
        n_nonrobust: number of weakly correlated features; feature j of class k has mean ``eta * code[k, j]``
            with a fixed random sign code and unit variance.
        eta: strength of each non-robust feature (an attacker with eps >= eta can flip it).
        radius: distance of the class centres in the robust plane from the origin.
        noise: standard deviation of the robust features around their class centre.
        seed: seed of the generator; the sign codes depend only on ``n_classes`` and ``n_nonrobust``.
    """
    if n < 1 or n_classes < 2 or n_nonrobust < 0:
        raise ConfigError("need n >= 1, n_classes >= 2 and n_nonrobust >= 0")
    code_gen = torch.Generator().manual_seed(1234 + 31 * n_classes + n_nonrobust)
    codes = torch.randint(0, 2, (n_classes, n_nonrobust), generator=code_gen).float() * 2 - 1
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % n_classes
    y = y[torch.randperm(n, generator=gen)]
    angles = 2 * math.pi * y.float() / n_classes
    centres = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    robust = centres + noise * torch.randn(n, 2, generator=gen)
    weak = eta * codes[y] + torch.randn(n, n_nonrobust, generator=gen)
    x = torch.cat([robust, weak], dim=1).clamp(*TOY_BOUNDS)
    return x, y
