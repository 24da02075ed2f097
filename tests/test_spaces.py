"""Property-based tests of the continuous spaces (Linf and L2 balls with bounds and a feature mask)."""

from __future__ import annotations

import copy
import math
import pickle
from dataclasses import dataclass

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import assume, given

import robustkit as rk
from robustkit.spaces import ContinuousSpace

KINDS = {"linf": rk.LinfBall, "l2": rk.L2Ball}


@dataclass
class Setup:
    """A space, clean inputs inside its bounds and the pieces it was built from."""

    kind: str
    eps: float
    low: torch.Tensor  # per feature, after broadcasting
    high: torch.Tensor
    bounds: tuple[float, float] | tuple[torch.Tensor, torch.Tensor]
    mask: torch.Tensor | None
    x: torch.Tensor

    def space(self, **changes) -> ContinuousSpace:
        args = {"eps": self.eps, "bounds": self.bounds, "mask": self.mask, **changes}
        return KINDS[self.kind](**args)

    @property
    def free(self) -> torch.Tensor:
        return torch.ones(self.x.shape[1], dtype=torch.bool) if self.mask is None else self.mask


def floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Finite float32 values in [lo, hi] (the ends rounded inwards to float32)."""
    lo32, hi32 = torch.tensor(lo), torch.tensor(hi)
    lo32 = lo32 if float(lo32) >= lo else lo32.nextafter(hi32)
    hi32 = hi32 if float(hi32) <= hi else hi32.nextafter(lo32)
    return st.floats(float(lo32), float(hi32), allow_nan=False, allow_infinity=False, width=32)


@st.composite
def setups(draw: st.DrawFn, kinds: tuple[str, ...] = tuple(KINDS), masked: bool | None = None) -> Setup:
    kind = draw(st.sampled_from(kinds))
    n, d = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    eps = draw(st.one_of(st.just(0.0), floats(0.0, 2.0)))
    bounds: tuple[float, float] | tuple[torch.Tensor, torch.Tensor]
    if draw(st.booleans()):  # one tensor per bound, one entry per feature
        low = torch.tensor(draw(st.lists(floats(-2.0, 1.0), min_size=d, max_size=d)))
        high = low + torch.tensor(draw(st.lists(floats(0.0, 2.0), min_size=d, max_size=d)))
        bounds = (low, high)
    else:
        lo = draw(floats(-2.0, 1.0))
        hi = lo + draw(floats(0.0, 2.0))
        bounds = (lo, hi)
        low, high = torch.full((d,), lo), torch.full((d,), hi)
    mask = None
    if masked or (masked is None and draw(st.booleans())):
        mask = torch.tensor(draw(st.lists(st.booleans(), min_size=d, max_size=d)))
    frac = torch.tensor(draw(st.lists(floats(0.0, 1.0), min_size=n * d, max_size=n * d))).reshape(n, d)
    x = torch.minimum(torch.maximum(low + frac * (high - low), low), high)
    return Setup(kind, eps, low, high, bounds, mask, x)


def points(n: int, d: int, scale: float = 5.0) -> st.SearchStrategy[torch.Tensor]:
    return st.lists(floats(-scale, scale), min_size=n * d, max_size=n * d).map(
        lambda v: torch.tensor(v).reshape(n, d)
    )


@st.composite
def setup_and_point(draw: st.DrawFn) -> tuple[Setup, torch.Tensor]:
    s = draw(setups())
    return s, draw(points(*s.x.shape))


# ----------------------------------------------------------------- geometry


@given(setup_and_point())
def test_project_is_idempotent_and_contained(case):
    s, z = case
    space = s.space()
    p = space.project(z, s.x)
    assert bool(space.contains(p, s.x).all())
    assert torch.allclose(space.project(p, s.x), p, atol=1e-6)
    assert torch.equal(space.project(s.x, s.x), s.x)  # the clean input is its own projection


@given(setup_and_point())
def test_projector_is_project_around_fixed_inputs(case):
    s, z = case
    space = s.space()
    prepared = space.projector(s.x)(z)
    assert bool(space.contains(prepared, s.x).all())
    # Linf's one-clamp box and project's clamp of the difference may round the last bit apart
    assert torch.allclose(prepared, space.project(z, s.x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("eps", [0.0, 1e-7, 0.1])
@pytest.mark.parametrize("masked", [False, True])
def test_projector_clamps_into_the_bounds_around_inputs_just_outside_them(eps, masked):
    """Clean inputs may lie up to atol outside the bounds (check_inputs allows it); both projections
    bring every coordinate back inside, the masked ones too."""
    x = torch.tensor([[-5e-7, 0.5, 1.0 + 5e-7]])
    mask = torch.tensor([True, True, False]) if masked else None
    space = rk.LinfBall(eps=eps, bounds=(0.0, 1.0), mask=mask)
    for z in (x, x + 1.0, x - 1.0):
        prepared, reference = space.projector(x)(z), space.project(z, x)
        assert bool(((prepared >= 0) & (prepared <= 1)).all())
        assert torch.allclose(prepared, reference, atol=1e-6, rtol=0)


def test_a_subclass_projection_is_what_its_projector_uses():
    class Coarse(rk.LinfBall):
        def project(self, x_adv, x):
            return torch.round(super().project(x_adv, x) * 4) / 4

    x = torch.full((1, 3), 0.5)
    assert torch.equal(Coarse(eps=0.3).projector(x)(x + 0.2), torch.full((1, 3), 0.75))


def test_device_and_dtype_copies_follow_in_place_changes_and_are_not_pickled():
    space = rk.LinfBall(eps=1.0, bounds=(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)))
    x = torch.full((1, 3), 0.5)  # float32: the float64 bounds are copied and the copy kept
    assert torch.equal(space.project(x - 1, x), torch.zeros(1, 3))
    assert space.__dict__["_device_copies"]
    space.low.fill_(0.25)
    assert torch.equal(space.project(x - 1, x), torch.full((1, 3), 0.25))
    assert "_device_copies" not in copy.deepcopy(space).__dict__
    assert "_device_copies" not in pickle.loads(pickle.dumps(space)).__dict__


@given(setups(), st.integers(0, 2**31 - 1))
def test_init_and_vertex_are_contained(s, seed):
    space = s.space()
    ids = torch.arange(len(s.x)) * 7 + 3
    for point in (space.init(s.x, seed=seed, ids=ids), space.vertex(s.x, seed=seed, ids=ids)):
        assert point.shape == s.x.shape
        assert bool(space.contains(point, s.x).all())


@given(setup_and_point(), floats(1e-3, 3.0), st.booleans())
def test_step_then_project_is_contained(case, step_size, per_example):
    s, grad = case
    space = s.space()
    start = space.init(s.x, seed=1)
    size = torch.full((len(s.x),), step_size) if per_example else step_size
    moved = space.project(space.step(start, grad, size), s.x)
    assert bool(space.contains(moved, s.x).all())


@given(setups(), st.integers(0, 2**31 - 1), st.integers(1, 3))
def test_random_starts_do_not_depend_on_chunking(s, seed, split):
    space = s.space()
    ids = torch.arange(len(s.x)) + 1000
    split = min(split, len(s.x))
    for draw in (space.init, space.vertex):
        whole = draw(s.x, seed=seed, ids=ids)
        parts = torch.cat(
            [draw(s.x[:split], seed=seed, ids=ids[:split]), draw(s.x[split:], seed=seed, ids=ids[split:])]
        )
        assert torch.equal(whole, parts)
        assert torch.equal(draw(s.x.flip(0), seed=seed, ids=ids.flip(0)), whole.flip(0))


@given(
    st.sampled_from(sorted(KINDS)),
    st.integers(1, 40),
    st.integers(1, 3),
    st.integers(0, 2**31 - 1),
    st.data(),
)
def test_random_starts_of_large_batches_do_not_depend_on_chunking(kind, n, d, seed, data):
    # vectorised kernels treat a batch's tail differently: the batch must be longer than a vector
    split = data.draw(st.integers(0, n))
    space = KINDS[kind](eps=0.5, bounds=(0.0, 1.0))
    x = torch.rand(n, d, generator=torch.Generator().manual_seed(seed))
    ids = torch.arange(n) * 3 + seed % 1000
    for draw in (space.init, space.vertex):
        parts = [draw(x[:split], seed=seed, ids=ids[:split]), draw(x[split:], seed=seed, ids=ids[split:])]
        assert torch.equal(draw(x, seed=seed, ids=ids), torch.cat(parts))


@given(setups(kinds=("l2",)))
def test_l2_vertex_lies_on_the_sphere_without_bounds(s):
    assume(bool(s.free.any()))
    space = s.space(bounds=(-math.inf, math.inf))
    delta = space.vertex(s.x, seed=5) - s.x
    assert torch.allclose(delta.norm(dim=1), torch.full((len(s.x),), s.eps), atol=1e-5)
    assert not delta[:, ~s.free].any()


# ----------------------------------------------------------------- contains rejects


@given(setups(), floats(1e-3, 1.0))
def test_contains_rejects_points_outside_the_ball(s, extra):
    assume(bool(s.free.any()))
    space = s.space(bounds=(-math.inf, math.inf))  # only the ball can reject
    j = int(s.free.nonzero()[0, 0])
    z = s.x.clone()
    z[:, j] += s.eps + extra
    assert not space.contains(z, s.x).any()
    z[:, j] = s.x[:, j] + s.eps * 0.999
    assert bool(space.contains(z, s.x).all())


@given(setups(), floats(1e-3, 1.0), st.booleans())
def test_contains_rejects_points_outside_the_bounds(s, extra, above):
    assume(bool(s.free.any()))
    space = s.space(eps=100.0)  # only the bounds (and the mask) can reject
    j = int(s.free.nonzero()[0, 0])
    z = s.x.clone()
    z[:, j] = s.high[j] + extra if above else s.low[j] - extra
    assert not space.contains(z, s.x).any()


@given(setups(masked=True), floats(1e-3, 1.0))
def test_contains_rejects_moving_masked_features(s, shift):
    assume(not bool(s.free.all()))
    space = s.space(eps=100.0, bounds=(-math.inf, math.inf))  # only the mask can reject
    j = int((~s.free).nonzero()[0, 0])
    z = s.x.clone()
    z[:, j] += shift
    assert not space.contains(z, s.x).any()


@given(setups())
def test_contains_rejects_non_finite_points_and_wrong_shapes(s):
    space = s.space()
    z = s.x.clone()
    z[0, 0] = float("nan")
    assert not bool(space.contains(z, s.x)[0])
    assert not space.contains(s.x[:, :0], s.x).any()
    assert bool(space.contains(s.x, s.x).all())


# ----------------------------------------------------------------- bad configuration and inputs


@pytest.mark.parametrize("cls", [rk.LinfBall, rk.L2Ball])
@pytest.mark.parametrize("eps", [-0.1, float("nan"), float("inf"), "big", None])
def test_bad_eps_raises_config_error(cls, eps):
    with pytest.raises(rk.ConfigError, match="eps"):
        cls(eps=eps)
    with pytest.raises(rk.ConfigError, match="eps"):
        cls(eps=0.1).with_budget(eps)


@pytest.mark.parametrize("cls", [rk.LinfBall, rk.L2Ball])
@pytest.mark.parametrize(
    ("bounds", "match"),
    [
        ((1.0, 0.0), "inverted"),
        ((torch.zeros(3), torch.tensor([1.0, -1.0, 1.0])), "inverted"),
        ((0.0, float("nan")), "NaN"),
        ((0.0,), "pair"),
        (1.0, "pair"),
        ((torch.zeros(3), torch.ones(4)), "incompatible shapes"),
    ],
)
def test_bad_bounds_raise_config_error(cls, bounds, match):
    with pytest.raises(rk.ConfigError, match=match):
        cls(eps=0.1, bounds=bounds)


def test_non_boolean_mask_raises_config_error():
    with pytest.raises(rk.ConfigError, match="mask must be boolean"):
        rk.LinfBall(eps=0.1, mask=torch.tensor([0, 2, 1]))
    assert rk.LinfBall(eps=0.1, mask=torch.tensor([0, 1])).mask.dtype == torch.bool


@pytest.mark.parametrize("cls", [rk.LinfBall, rk.L2Ball])
def test_bad_inputs_raise_data_error(cls):
    space = cls(eps=0.1, bounds=(0.0, 1.0))
    with pytest.raises(rk.DataError, match="outside the space's bounds"):
        space.check_inputs(torch.full((2, 3), 1.5))
    with pytest.raises(rk.DataError, match="divide by 255"):
        space.check_inputs(torch.full((2, 3), 200.0))
    with pytest.raises(rk.DataError, match="NaN or Inf"):
        space.check_inputs(torch.tensor([[0.5, float("nan"), 0.5]]))
    with pytest.raises(rk.DataError, match="floating-point"):
        space.check_inputs(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(rk.DataError, match="bounds do not broadcast"):
        cls(eps=0.1, bounds=(torch.zeros(4), torch.ones(4))).check_inputs(torch.zeros(2, 3))
    with pytest.raises(rk.DataError, match="mask of shape"):
        cls(eps=0.1, mask=torch.ones(4, dtype=torch.bool)).check_inputs(torch.zeros(2, 3))
    cls(eps=0.1, mask=torch.ones(1, dtype=torch.bool)).check_inputs(torch.zeros(2, 3))  # broadcasts


def test_with_budget_keeps_everything_else():
    mask = torch.tensor([True, False])
    space = rk.L2Ball(eps=0.5, bounds=(0.0, 1.0), mask=mask)
    other = space.with_budget(0.25)
    assert isinstance(other, rk.L2Ball) and other.eps == 0.25 and space.eps == 0.5
    assert other.mask is mask and float(other.high) == 1.0
    assert repr(other) == "L2Ball(eps=0.25)"


def test_covering_budget():
    x = torch.zeros(1, 4)
    assert rk.LinfBall(eps=0.1, bounds=(0.0, 1.0)).covering_budget(x) == pytest.approx(1.0)
    assert rk.L2Ball(eps=0.1, bounds=(0.0, 1.0)).covering_budget(x) == pytest.approx(2.0)
    masked = rk.L2Ball(eps=0.1, bounds=(0.0, 1.0), mask=torch.tensor([True, False, False, False]))
    assert masked.covering_budget(x) == pytest.approx(1.0)
    assert rk.LinfBall(eps=0.1).covering_budget(x) is None
