"""Tabular attacks: the schema attack against unconstrained references, repair failures, the categorical
search (valid rows only, the closed-form best change on linear models) and the rows a run writes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import robustkit as rk
from domains.tabular import SchemaSpace, TabularDomain, TabularOptions, decode, encode, repair
from domains.tabular.attacks import (
    Anchored,
    CategoricalSpace,
    DiscreteSearch,
    SearchTraining,
    SparseSchemaSpace,
    changes,
    repair_rows,
    strongest_attacks,
    worst_case,
)
from domains.tabular.schema import Column, Schema
from domains.tabular.synthetic import card_schema, generate
from robustkit.attacks import APGD, PGD
from robustkit.domain import Examples
from tests.strategies import schema_and_rows

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- (a) against unconstrained attacks
def _project_l1(v: torch.Tensor, radius: float) -> torch.Tensor:
    """Euclidean projection of each row onto the L1 ball of ``radius`` (Duchi et al. 2008)."""
    a = v.abs()
    inside = a.sum(dim=1) <= radius
    mu, _ = torch.sort(a, dim=1, descending=True)
    cs = mu.cumsum(dim=1) - radius
    k = torch.arange(1, v.shape[1] + 1, dtype=v.dtype)
    rho = ((mu - cs / k) > 0).sum(dim=1, keepdim=True).clamp(min=1)
    theta = cs.gather(1, rho - 1) / rho.to(v.dtype)
    out = v.sign() * (a - theta).clamp(min=0)
    return torch.where(inside.unsqueeze(1), v, out)


def _weighted_l1_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                     budget: float) -> torch.Tensor:
    """A plain PGD in ``u = w * delta`` over the L1 ball ``|u|_1 <= budget``: normalised gradient steps,
    two step sizes, success tracked at every step. Returns the success per row."""
    success = torch.zeros(len(x), dtype=torch.bool)
    for alpha in (budget / 4, budget / 20):
        u = torch.zeros_like(x)
        for _ in range(100):
            u.requires_grad_(True)
            logits = model(x + u / w)
            success |= (logits.argmax(dim=1) != y).detach()
            (g,) = torch.autograd.grad(nn.functional.cross_entropy(logits, y, reduction="sum"), u)
            u = _project_l1(u.detach() + alpha * g / g.norm(dim=1, keepdim=True).clamp_min(1e-12), budget)
        success |= model(x + u / w).argmax(dim=1) != y
    return success


def _numeric_problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, Schema]:
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0, 10.0])
    x = torch.randn(1500, 6, generator=g) * scale
    z = x / scale
    y = ((z[:, 0] + 0.5 * z[:, 1] ** 2 - z[:, 2] * z[:, 3] + 0.3 * z[:, 5]) > 0.7).long()
    costs = [0.5, 0.2, 2.0, 0.4, 1.0, 0.05]
    schema = Schema([Column(f"f{j}", "continuous", mutable=True, lower=-1e4, upper=1e4, cost=c)
                     for j, c in enumerate(costs)], budget=0.6)
    return x, y, schema


def test_schema_attack_matches_a_plain_weighted_l1_attack_when_everything_is_mutable():
    x, y, schema = _numeric_problem()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    keep = model(x).argmax(dim=1) == y
    xa, ya = x[keep][:400], y[keep][:400]
    ours = torch.zeros(len(xa), dtype=torch.bool)
    for name, attack in strongest_attacks(schema).items():
        if name != "search":
            result = attack(model, xa, ya)
            assert bool(attack.space.contains(result.x_adv, xa).all())
            ours |= result.success
    w = torch.tensor([c.cost for c in schema.columns])
    reference = _weighted_l1_pgd(model, xa, ya, w, schema.budget)
    ours_rate, ref_rate = float(ours.float().mean()), float(reference.float().mean())
    assert 0.15 < ref_rate < 0.85, "the budget should leave both outcomes"
    assert abs(ours_rate - ref_rate) <= 0.04, (ours_rate, ref_rate)


def test_schema_attack_reaches_the_closed_form_on_a_linear_model():
    x, _, schema = _numeric_problem(1)
    a = torch.tensor([1.0, -0.4, 2.0, 0.3, -1.0, 0.05])
    model = nn.Linear(6, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.weight[1] = a
        model.bias.copy_(torch.tensor([0.0, 0.5]))
    logit = x @ a + 0.5
    keep = logit > 0
    xa, margin = x[keep][:400], logit[keep][:400]
    w = torch.tensor([c.cost for c in schema.columns])
    reach = schema.budget * float((a.abs() / w).max())  # the cheapest coordinate, spent entirely
    result = rk.APGD(SparseSchemaSpace(schema), steps=100)(model, xa, torch.ones(len(xa), dtype=torch.long))
    possible = margin < reach
    assert not bool((result.success & ~possible).any())
    clear = (margin - reach).abs() > 0.02 * reach
    assert bool((result.success == possible)[clear].all()), "every row the budget allows is broken"


# ----------------------------------------------------------------------------- (b) repair failures
def test_repair_failures_stay_rare_under_pgd_with_an_integer_relation():
    df = generate(3000, seed=0, fraud_rate=0.15)
    rng = np.random.default_rng(0)
    df.insert(0, "items", (np.ceil(df["amount"] / 250) + rng.integers(0, 3, len(df))).astype(np.int64))
    base = card_schema()
    schema = Schema([*base.columns, Column("items", "integer", mutable=True, lower=1, upper=40, cost=0.1)],
                    base.budget, base.target, ["amount <= 250 * items"])
    domain = TabularDomain()
    data = domain.from_frame(df, schema, seed=0)
    torch.manual_seed(0)
    model = domain.build_model(domain.model_spec(data, TabularOptions()))
    rk.AdversarialTrainer(model, domain.space(schema.budget, data), method="standard", progress=False,
                          optimizer=torch.optim.Adam(model.parameters(), lr=3e-3)).fit(
        domain.loader(data.train, 128, shuffle=True), epochs=3)
    decided = domain.decided(model.eval(), domain.choose_threshold(model, data))
    x, y = data.test.tensors
    idx = (y == 1).nonzero().squeeze(1)
    original = data.raw["frames"]["test"].iloc[idx.numpy()]
    for space in (SchemaSpace(schema), SparseSchemaSpace(schema)):
        result = rk.PGD(space, steps=20, restarts=2)(decided, x[idx], y[idx])
        assert float(result.success.float().mean()) > 0.3, "the attack must move rows for the check to mean much"
        rows, failed, shrunk = repair_rows(schema, result.x_adv, x[idx], original)
        assert schema.validate(rows, original).all()
        assert failed.mean() < 0.05
        again, info = repair(schema, result.x_adv, x[idx], original)  # the same rows, with cost and changes
        assert again.equals(rows) and (info["repair_failed"].to_numpy() == failed).all()
        assert (info["shrunk"].to_numpy() == shrunk).all() and info["cost"].max() <= schema.budget * (1 + 1e-6)


# ----------------------------------------------------------------------------- (c) the categorical search
def schema_rows_relations() -> st.SearchStrategy[tuple[Schema, pd.DataFrame]]:
    """Small schemas (bounds near 0, a few costs and budgets) with rows, sometimes with a tight relation."""
    return schema_and_rows(max_rows=5, max_categories=5, bound=5, span=6,
                           costs=st.sampled_from([0.25, 0.5, 1.0, 1.5, 3.0]),
                           budgets=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5]), relation=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema_rows_relations(), st.integers(0, 2**16), st.integers(1, 8))
def test_categorical_search_returns_only_valid_rows(case, seed, candidates):
    schema, df = case
    x = encode(schema, df)
    space = CategoricalSpace(schema)
    rows = space.rows(x)
    assert torch.equal(space.encode(rows), x)
    torch.manual_seed(seed)
    model = nn.Linear(x.shape[1], 2)
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # attack away from whatever the model says
    result = rk.DiscreteSearch(space, candidates_per_step=candidates)(model, rows, y)
    assert bool(space.contains(result.x_adv, rows).all())
    adv = decode(schema, space.encode(result.x_adv), df, x)
    assert schema.validate(adv, df).all()
    searched = {schema.columns[k].name for k in space.searched}
    moved = set(changes(schema, adv, df)["column"])
    assert moved <= searched
    for row, start in zip(result.x_adv, rows, strict=True):  # every edit the search could still make is allowed
        for edit in space.candidates(row, start):
            assert bool(space.contains([space.apply(row, edit)], [start])[0])


@pytest.mark.parametrize("seed", range(12))
def test_categorical_search_finds_the_best_single_category_change_of_a_linear_model(seed):
    rng = np.random.default_rng(seed)
    columns = [Column(f"cat{k}", "categorical", mutable=True, categories=[f"v{i}" for i in range(size)], cost=1.0)
               for k, size in enumerate((3, 5, 4))]
    columns += [Column("flag", "binary", mutable=True, cost=2.0), Column("age", "integer", lower=0, upper=99)]
    schema = Schema(columns, budget=1.0)
    df = pd.DataFrame({**{c.name: rng.choice(c.categories, 6) for c in columns[:3]},
                       "flag": rng.integers(0, 2, 6), "age": rng.integers(0, 100, 6)})
    x = encode(schema, df)
    a = torch.as_tensor(rng.normal(size=x.shape[1]), dtype=torch.float32)
    a[-2:] = 0.0  # flag (too costly to change) and age (immutable) play no part
    # every row flagged when clean; + 50: never broken, so the search keeps the highest loss
    bias = 0.1 - float((x @ a).min()) + float(rng.choice([0.0, 50.0]))
    model = nn.Linear(x.shape[1], 2)
    with torch.no_grad():
        model.weight.zero_()
        model.weight[1] = a
        model.bias.copy_(torch.tensor([0.0, bias]))
    space = CategoricalSpace(schema)
    rows = space.rows(x)
    search = rk.DiscreteSearch(space, candidates_per_step=1, loss="margin")  # CE saturates at bias 50
    result = search(model, rows, torch.ones(len(rows), dtype=torch.long))
    lay = space.where
    for row, adv in zip(rows, result.x_adv, strict=True):
        best, best_drop = row, 0.0
        for k in range(3):
            start, size = lay[k]
            for c in range(size):
                drop = float(a[start + c] - a[start + row[k]])
                if drop < best_drop - 1e-6:
                    best, best_drop = space.apply(row, rk.Edit(k, c)), drop
        assert adv == best


def test_anchored_rows_count_their_cost_from_the_origin():
    schema = Schema([Column("a", "categorical", mutable=True, categories=["x", "y", "z"], cost=1.0),
                     Column("b", "categorical", mutable=True, categories=["x", "y"], cost=1.0)], budget=1.0)
    space = CategoricalSpace(schema)
    start = Anchored((1, 0), origin=(0, 0))  # already spent the whole budget on column a
    assert sorted((e.position, e.value) for e in space.candidates(start, start)) == [(0, 0), (0, 2)]
    assert space.contains([space.apply(start, rk.Edit(0, 2))], [start]).tolist() == [True]
    assert space.contains([(1, 1)], [start]).tolist() == [False]


# ----------------------------------------------------------------------------- worst case and the rows written
def test_worst_case_rows_and_the_examples_csv_cover_every_test_fraud_row(tmp_path):
    domain = TabularDomain()
    schema = card_schema()
    data = domain.from_frame(generate(1500, seed=0, fraud_rate=0.15), schema, seed=0)
    torch.manual_seed(0)
    model = domain.build_model(domain.model_spec(data, TabularOptions()))
    rk.AdversarialTrainer(model, domain.space(schema.budget, data), method="standard", progress=False,
                          optimizer=torch.optim.Adam(model.parameters(), lr=3e-3)).fit(
        domain.loader(data.train, 128, shuffle=True), epochs=3)
    threshold = domain.choose_threshold(model, data)
    decided = domain.decided(model.eval(), threshold)
    x, y = data.test.tensors
    report = rk.evaluate(decided, (x, y), domain.space(schema.budget, data), attacks="quick", mask=y == 1,
                         checks=False)
    assessment = domain.assess(decided, data, report)
    metrics = assessment.metrics
    merged = report.with_attack("strongest", assessment.survived["strongest"])
    attacked = merged.lead.attacked  # recall under the evaluation's attacks and the strongest suite together
    assert merged.lead.measure == "recall" and merged.lead.clean == report.lead.clean
    assert 0 <= attacked <= min(metrics["recall_attacked_strongest"], report.lead.attacked) <= report.lead.clean
    assert merged.robust_accuracy["worst"] <= report.robust_accuracy["worst"]
    assert "strongest" in merged.robust_accuracy and "strongest" in merged.table["attack"].tolist()
    assert metrics["valid_adversarial_share"] == 1.0 and metrics["repair_failed_share"] == 0.0
    assert 0 < metrics["mean_cost_successful"] <= schema.budget + 1e-6
    first = x[:16]
    pred = decided(first).argmax(dim=1)
    examples = Examples(first, first.clone(), y[:16], pred, pred, torch.zeros(16, dtype=torch.bool),
                        evidence=assessment.evidence)
    paths = domain.write_examples(tmp_path, examples, data)
    table = pd.read_csv(paths[0], index_col="index")
    fraud = (y == 1).nonzero().squeeze(1).tolist()
    assert table.index.tolist() == fraud
    assert {"fooled", "valid", "repair_failed", "cost", "changed", "attack", "amount", "country"} <= set(table.columns)
    assert table["valid"].all() and (table["cost"] <= schema.budget + 1e-6).all()
    clear = (table["p_fraud_adversarial"] - threshold).abs() > 1e-6
    decided_legit = table["p_fraud_adversarial"] < threshold
    assert ((table["fooled"] == (decided_legit & table["detected_clean"])) | ~clear).all()
    assert abs(table["fooled"].sum() / table["detected_clean"].sum() - metrics["attack_success_rate_strongest"]) < 1e-9
    cells = pd.read_csv(paths[1])
    assert set(cells["row"]) <= set(fraud) and (cells["cost"] > 0).all()
    per_row = cells.groupby("row")["cost"].sum().reindex(table.index, fill_value=0.0)
    assert np.allclose(per_row.to_numpy(), table["cost"].to_numpy(), atol=1e-6)
    rows = table[schema.names].astype({c.name: str for c in schema.columns if not c.numeric})
    original = data.raw["frames"]["test"].iloc[fraud][schema.names].set_axis(table.index)
    assert schema.validate(rows, original).all()

    other = Examples(first, first.clone(), y[:16], 1 - pred, pred, torch.zeros(16, dtype=torch.bool))
    fallback = pd.read_csv(domain.write_examples(tmp_path / "other", other, data)[0])
    assert len(fallback) == 16, "examples without the domain's evidence are written as given"


def test_worst_case_judges_only_valid_rows_and_keeps_the_cheapest_success():
    schema = Schema([Column("shop", "categorical", mutable=True, categories=["a", "b", "c"], cost=1.0),
                     Column("amount", "continuous", mutable=True, lower=0, upper=100, cost=0.1)], budget=1.5)
    df = pd.DataFrame({"shop": ["a", "c", "b"], "amount": [50.0, 5.0, 80.0]})
    x = encode(schema, df)
    model = nn.Linear(x.shape[1], 2)  # fraud unless the shop is c or the amount is below 45
    with torch.no_grad():
        model.weight.zero_()
        model.weight[1] = torch.tensor([5.0, 5.0, -5.0, 0.1])
        model.bias.copy_(torch.tensor([0.0, -4.5]))
    found = worst_case(model, schema, x, df, prune=False)
    t = found.table
    assert t["detected_clean"].tolist() == [True, False, True]
    assert t["fooled"].tolist() == [True, False, True] and t["valid"].all()
    assert t.loc[1, "attack"] == "none (missed when clean)" and t.loc[1, "cost"] == 0.0
    assert (found.rows.loc[[0, 2], "shop"] == "c").all() and (t.loc[[0, 2], "cost"] <= 1.0 + 1e-6).all()
    assert found.summary()["recall_attacked_strongest"] == 0.0
    pruned = worst_case(model, schema, x, df)  # the first member's evasion is kept: the same rows, dearer
    assert pruned.table["fooled"].tolist() == t["fooled"].tolist()
    assert (pruned.table.loc[[0, 2], "cost"] >= t.loc[[0, 2], "cost"]).all()


def test_worst_case_on_a_model_no_attack_can_move():
    schema = Schema([Column("shop", "categorical", mutable=True, categories=["a", "b"], cost=1.0),
                     Column("age", "integer", lower=0, upper=99)], budget=2.0)
    df = pd.DataFrame({"shop": ["a", "b"], "age": [30, 60]})
    x = encode(schema, df)
    model = nn.Linear(x.shape[1], 2)
    with torch.no_grad():
        model.weight.zero_()
        model.weight[1, 2] = 1.0  # only the immutable age counts
    found = worst_case(model, schema, x, df)
    assert not found.table["fooled"].any() and (found.table["changed"] == "").all()
    assert found.summary()["recall_attacked_strongest"] == 1.0


def test_pgd_search_is_the_tabular_domains_own_method() -> None:
    domain = TabularDomain()
    data = domain.load_data("synthetic", seed=0, options=TabularOptions(n_rows=400, fraud_rate=0.2))
    assert "pgd+search" in domain.methods
    assert isinstance(domain.training_method("pgd+search", data, 3.0), SearchTraining)
    with pytest.raises(rk.ConfigError, match="pgd\\+search"):
        domain.training_method("discrete", data, 3.0)


def test_pruned_worst_case_evades_the_rows_the_full_suite_evades_and_later_members_see_fewer() -> None:
    domain, schema = TabularDomain(), card_schema()
    data = domain.from_frame(generate(1200, seed=1, fraud_rate=0.2), schema, seed=0)
    torch.manual_seed(0)
    model = domain.build_model(domain.model_spec(data, TabularOptions()))
    rk.AdversarialTrainer(model, domain.space(schema.budget, data), method="standard", progress=False,
                          optimizer=torch.optim.Adam(model.parameters(), lr=3e-3)).fit(
        domain.loader(data.train, 128, shuffle=True), epochs=2)
    decided = domain.decided(model.eval(), domain.choose_threshold(model, data))
    x, y = data.test.tensors
    idx = (y == 1).nonzero().squeeze(1)
    original = data.raw["frames"]["test"].iloc[idx.numpy()]
    space, sparse = SchemaSpace(schema), SparseSchemaSpace(schema)
    suite = {"pgd": PGD(space, steps=10, restarts=2), "pgd-sparse": PGD(sparse, steps=10, restarts=2),
             "apgd": APGD(sparse, steps=10), "search": DiscreteSearch(CategoricalSpace(schema), max_steps=3)}
    full, pruned = (worst_case(decided, schema, x[idx], original, attacks=suite, prune=p) for p in (False, True))
    evaded = full.table["fooled"].to_numpy()
    assert 0 < evaded.sum() < full.table["detected_clean"].sum(), "a problem where some rows resist"
    np.testing.assert_array_equal(pruned.table["fooled"].to_numpy(), evaded)
    kept = ~evaded  # rows no member evades: every member saw them in both runs, so the same row is kept
    np.testing.assert_array_equal(pruned.table["p_fraud_adversarial"].to_numpy()[kept],
                                  full.table["p_fraud_adversarial"].to_numpy()[kept])
    assert pruned.table["valid"].all() and pruned.summary()["pruned"] and "recall_attacked_by_attack" not in \
        pruned.summary()
    seen = np.zeros(len(idx), dtype=bool)
    for name in suite:  # each member saw exactly the detected rows no earlier member evaded
        np.testing.assert_array_equal(pruned.attacked_by[name], full.table["detected_clean"].to_numpy() & ~seen)
        assert not (pruned.fooled_by[name] & ~pruned.attacked_by[name]).any()
        seen |= pruned.fooled_by[name]
    assert pruned.attacked_by["search"].sum() < full.attacked_by["search"].sum()
