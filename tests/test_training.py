"""The training loop and its methods on the built-in robust/non-robust problem."""

from __future__ import annotations

import io

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import robustkit as rk
from robustkit.datasets import TOY_BOUNDS, TOY_EPS, robust_nonrobust

SPACE = rk.LinfBall(eps=TOY_EPS, bounds=TOY_BOUNDS)


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    x, y = robust_nonrobust(2000, seed=0)
    xt, yt = robust_nonrobust(1000, seed=1)
    return {"x": x, "y": y, "xt": xt, "yt": yt}


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(130, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))


def loader(data: dict[str, torch.Tensor], batch_size: int = 128) -> DataLoader:
    return DataLoader(TensorDataset(data["x"], data["y"]), batch_size=batch_size, shuffle=True)


def robust_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    result = rk.PGD(SPACE, steps=20)(model, x, y)
    with torch.no_grad():
        return float((model(result.x_adv).argmax(1) == y).float().mean())


def train(data: dict[str, torch.Tensor], method: str | rk.methods.Method, epochs: int = 8, **kw) -> torch.nn.Module:
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rk.AdversarialTrainer(model, SPACE, method=method, optimizer=opt, progress=False, **kw).fit(
        loader(data), epochs=epochs
    )
    return model.eval()


@pytest.fixture(scope="module")
def standard_robust(data: dict[str, torch.Tensor]) -> float:
    return robust_accuracy(train(data, "standard"), data["xt"], data["yt"])


@pytest.mark.parametrize("method", ["fgsm-mix", "fast", "pgd", "trades", "free"])
def test_every_method_beats_standard_under_pgd(data, standard_robust, method):
    model = train(data, method)
    margin = 0.2 if method in ("pgd", "trades") else 0.1
    assert robust_accuracy(model, data["xt"], data["yt"]) > standard_robust + margin


def test_standard_model_is_not_robust_on_the_toy_problem(data, standard_robust):
    model = train(data, "standard")
    with torch.no_grad():
        clean = float((model(data["xt"]).argmax(1) == data["yt"]).float().mean())
    assert clean > 0.9
    assert standard_robust < clean - 0.3


def test_trades_maximises_kl_not_cross_entropy(data):
    """The inner loss of TRADES is KL to the clean prediction: its attack must raise the KL."""
    model = train(data, "standard", epochs=2)
    x, y = data["xt"][:200], data["yt"][:200]
    with torch.no_grad():
        clean = model(x)
    attack = rk.PGD(SPACE, steps=5, init_scale=1e-3, loss=rk.methods.TRADES._kl_loss, early_stop=False)
    x_adv = attack(model, x, y, reference=clean).x_adv
    with torch.no_grad():
        kl = rk.losses.kl(model(x_adv), clean)
    assert float(kl.mean()) > 0.05
    assert bool(SPACE.contains(x_adv, x).all())


class StepCounter(rk.Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, trainer, loss):
        self.steps += 1


class StopAfter(rk.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer, record):
        if record["epoch"] >= self.epoch:
            trainer.control.stop(f"epoch {self.epoch} reached")


class Killed(Exception):
    pass


class KillAfter(rk.Callback):
    """Dies as a killed process would: after epoch ``epoch``'s checkpoint, before the next epoch starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_start(self, trainer):
        if trainer.epoch == self.epoch:
            raise Killed


class Figure(rk.Callback):
    """Adds a figure of its own to every epoch's record, as a method that generates training data does."""

    def on_epoch_end(self, trainer, record):
        record["figure"] = 10 * record["epoch"]


def test_resume_runs_only_the_remaining_steps_and_matches_an_uninterrupted_run(data, tmp_path):
    small = {"x": data["x"][:512], "y": data["y"][:512]}
    steps_per_epoch = 4

    def run(callbacks, ckpt, resume=None):
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
        trainer = rk.AdversarialTrainer(
            model, SPACE, method="pgd", optimizer=opt, scheduler=sched, checkpoint_dir=ckpt,
            callbacks=callbacks, progress=False, seed=3,
        )
        trainer.fit(loader(small, batch_size=128), epochs=4, resume=resume)
        return model, trainer

    full, _ = run([], tmp_path / "full")
    with pytest.raises(Killed):
        run([KillAfter(2)], tmp_path / "cut")
    counter = StepCounter()
    resumed, trainer = run([counter], tmp_path / "cut", resume=tmp_path / "cut")
    assert counter.steps == 2 * steps_per_epoch
    assert trainer.global_step == 4 * steps_per_epoch
    assert [r["epoch"] for r in trainer.history] == [1, 2, 3, 4]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_resumed_run_keeps_what_callbacks_added_to_the_record_and_where_they_stopped(data, tmp_path):
    small = {"x": data["x"][:256], "y": data["y"][:256]}

    def run(callbacks, ckpt, resume=None):
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        trainer = rk.AdversarialTrainer(model, SPACE, method="fast", optimizer=opt, checkpoint_dir=ckpt,
                                        callbacks=callbacks, progress=False, seed=3)
        trainer.fit(loader(small), epochs=4, resume=resume)
        return trainer

    full = run([Figure(), StopAfter(3)], tmp_path / "full")
    assert [r["figure"] for r in full.history] == [10, 20, 30]
    assert [r.get("stop_reason") for r in full.history] == [None, None, "epoch 3 reached"]
    with pytest.raises(Killed):
        run([Figure(), StopAfter(3), KillAfter(2)], tmp_path / "cut")
    resumed = run([Figure(), StopAfter(3)], tmp_path / "cut", resume=tmp_path / "cut")
    untimed = [[{k: v for k, v in r.items() if not k.endswith("seconds")} for r in t.history] for t in (full, resumed)]
    assert untimed[0] == untimed[1]
    stopped = run([Figure()], tmp_path / "full", resume=tmp_path / "full")
    assert stopped.global_step == full.global_step, "a run a callback stopped is not trained on when resumed"
    assert [r["figure"] for r in stopped.history] == [10, 20, 30]
    assert stopped.control.reason == "epoch 3 reached"


def test_a_callback_stops_through_the_control_and_the_first_reason_is_kept(data):
    class Both(rk.Callback):
        def on_step_end(self, trainer, loss):
            trainer.control.stop("asked mid-epoch")

        def on_epoch_end(self, trainer, record):
            trainer.control.stop("asked at the end")

    small = {"x": data["x"][:256], "y": data["y"][:256]}
    lines = io.StringIO()
    trainer = rk.AdversarialTrainer(make_model(), SPACE, method="standard", progress=False,
                                    callbacks=[Both(), rk.callbacks.EpochLog(stream=lines)])
    history = trainer.fit(loader(small), epochs=3)
    assert list(history["epoch"]) == [1], "the epoch that was running finishes, no later one starts"
    assert trainer.global_step == 2, "a stop asked mid-epoch lets the epoch finish"
    assert list(history["stop_reason"]) == ["asked mid-epoch"]
    assert lines.getvalue().rstrip().endswith("s; stopped: asked mid-epoch)")
    assert trainer.stop_training
    with pytest.raises(rk.ConfigError, match="reason"):
        trainer.control.stop("  ")


def test_a_callback_that_still_sets_stop_training_stops_with_a_deprecation_warning(data):
    class Legacy(rk.Callback):
        def on_epoch_end(self, trainer, record):
            trainer.stop_training = record["epoch"] >= 2

    small = {"x": data["x"][:256], "y": data["y"][:256]}
    trainer = rk.AdversarialTrainer(make_model(), SPACE, method="standard", callbacks=[Legacy()], progress=False)
    with pytest.warns(DeprecationWarning, match=r"trainer\.control\.stop"):
        history = trainer.fit(loader(small), epochs=4)
    assert list(history["epoch"]) == [1, 2]
    assert list(history["stop_reason"].fillna("")) == ["", "a callback set trainer.stop_training"]


def test_catastrophic_overfitting_guard_restores_the_best_weights(data):
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    class Collapse(rk.Callback):
        """Destroy robustness at the last step of epoch 3, then record each epoch's weights."""

        def on_step_end(self, trainer, loss):
            if trainer.global_step == 3 * 16:
                with torch.no_grad():
                    first = trainer.model[0].weight
                    first[:, :2] = 0.0
                    first[:, 2:] *= 20.0

        def on_epoch_end(self, trainer, record):
            snapshots[record["epoch"]] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    model = make_model()
    trainer = rk.AdversarialTrainer(
        model, SPACE, method=rk.methods.Fast(), optimizer=torch.optim.Adam(model.parameters(), lr=3e-3),
        callbacks=[Collapse()], progress=False,
    )
    history = trainer.fit(loader(data), epochs=6)
    assert list(history["guard_fired"]) == [False, False, True]
    assert history["stop_reason"].iloc[-1].startswith("catastrophic overfitting")
    best_epoch = int(history["guard_robust_accuracy"][:2].idxmax()) + 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[best_epoch][k]), k


def test_a_fast_run_resumed_after_a_kill_fires_its_guard_as_the_uninterrupted_run_does(data, tmp_path):
    class Collapse(rk.Callback):
        def on_step_end(self, trainer, loss):
            if trainer.global_step == 3 * 16:
                with torch.no_grad():
                    trainer.model[0].weight[:, :2] = 0.0
                    trainer.model[0].weight[:, 2:] *= 20.0

    def run(callbacks, ckpt, resume=None):
        model = make_model()
        trainer = rk.AdversarialTrainer(model, SPACE, method="fast", optimizer=torch.optim.Adam(model.parameters(),
                                        lr=3e-3), checkpoint_dir=ckpt, callbacks=callbacks, progress=False)
        trainer.fit(loader(data), epochs=6, resume=resume)
        return model, trainer

    full, trained = run([Collapse()], tmp_path / "full")
    with pytest.raises(Killed):
        run([Collapse(), KillAfter(2)], tmp_path / "cut")
    resumed, again = run([Collapse()], tmp_path / "cut", resume=tmp_path / "cut")
    assert [r["guard_fired"] for r in again.history] == [False, False, True]
    untimed = [[{k: v for k, v in r.items() if not k.endswith("seconds")} for r in t.history] for t in (trained, again)]
    assert untimed[0] == untimed[1]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_budget_warmup_and_class_weights(data):
    model = make_model()
    trainer = rk.AdversarialTrainer(model, SPACE, method="pgd", budget_warmup=2, class_weights="balanced",
                                    progress=False)
    history = trainer.fit(loader(data), epochs=3)
    assert list(history["budget"]) == pytest.approx([TOY_EPS / 2, TOY_EPS, TOY_EPS])
    assert trainer.class_weights is not None and torch.allclose(trainer.class_weights, torch.ones(3), atol=0.01)


def test_attackable_mask_leaves_other_examples_clean(data):
    """With only class 0 attackable, PGD training must not perturb the other classes."""
    seen: list[torch.Tensor] = []

    class Spy(rk.methods.PGDTraining):
        def loss(self, batch):
            seen.append(batch.attackable.clone())
            attack = self._attack(batch.space, batch.seed)
            result = attack(batch.model, batch.x, batch.y, mask=batch.attackable, ids=batch.ids)
            assert torch.equal(result.x_adv[~batch.attackable], batch.x[~batch.attackable])
            return batch.criterion(batch.forward(result.x_adv), batch.y)

    trainer = rk.AdversarialTrainer(make_model(), SPACE, method=Spy(steps=2), attackable=lambda x, y: y == 0,
                                    progress=False)
    trainer.fit(loader(data), epochs=1)
    assert seen and all(m.any() and not m.all() for m in seen)


def test_a_method_returns_its_logits_and_one_that_returns_a_bare_loss_is_refused(data):
    class Bare(rk.methods.Standard):
        def loss(self, batch):
            return super().loss(batch).value

    small = loader({"x": data["x"][:256], "y": data["y"][:256]})
    with pytest.raises(rk.ConfigError, match=r"Bare\.loss returned Tensor: a method returns rk\.methods\.Loss"):
        rk.AdversarialTrainer(make_model(), SPACE, method=Bare(), progress=False).fit(small, epochs=1)
    history = rk.AdversarialTrainer(make_model(), SPACE, method="trades", progress=False).fit(small, epochs=1)
    assert 0 < float(history["train_accuracy"][0]) < 1  # counted on the adversarial logits TRADES returned


def test_training_leaves_no_gradient_in_inputs_and_restores_train_mode_after_attacks(data):
    model = make_model()
    model.train()
    trainer = rk.AdversarialTrainer(model, SPACE, method="trades", progress=False)
    trainer.fit(loader({"x": data["x"][:256], "y": data["y"][:256]}), epochs=1)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "fit_kwargs", "error"),
    [
        ({"method": "nope"}, {}, rk.ConfigError),
        ({"budget_warmup": -1}, {}, rk.ConfigError),
        ({"class_weights": [1.0, 2.0]}, {}, rk.ConfigError),
        ({}, {"epochs": 0}, rk.ConfigError),
    ],
)
def test_bad_settings_are_refused_before_training(data, kwargs, fit_kwargs, error):
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error):
        trainer = rk.AdversarialTrainer(model, SPACE, progress=False, **kwargs)
        trainer.fit(loader(data), **{"epochs": 1, **fit_kwargs})
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (torch.full((8, 130), 9.0), torch.zeros(8, dtype=torch.long), "outside the space's bounds"),
        (torch.full((8, 130), float("nan")), torch.zeros(8, dtype=torch.long), "NaN"),
        (torch.zeros(8, 130), torch.full((8,), 5, dtype=torch.long), "labels span"),
    ],
)
def test_bad_data_is_refused_before_training(x, y, match):
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(rk.DataError, match=match):
        rk.AdversarialTrainer(model, SPACE, progress=False).fit(DataLoader(TensorDataset(x, y), batch_size=4), 1)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_empty_loader_is_refused():
    with pytest.raises(rk.DataError, match="empty"):
        rk.AdversarialTrainer(make_model(), SPACE, progress=False).fit([], epochs=1)


def test_validation_data_may_be_a_tuple_like_evaluate_takes() -> None:
    torch.manual_seed(0)
    x, y = torch.rand(300, 4), torch.randint(0, 2, (300,))
    space = rk.LinfBall(eps=0.1, bounds=(0.0, 1.0))
    loader = DataLoader(TensorDataset(x, y), batch_size=100)

    def fit(val):
        torch.manual_seed(1)
        return rk.AdversarialTrainer(torch.nn.Linear(4, 2), space, "fast", progress=False, seed=1).fit(
            loader, 1, val_loader=val)

    as_tuple, as_loader = fit((x, y)), fit(DataLoader(TensorDataset(x, y), batch_size=256))
    columns = ["val_clean_accuracy", "val_robust_accuracy"]
    assert as_tuple[columns].notna().all().all() and as_tuple[columns].equals(as_loader[columns])
    with pytest.raises(rk.DataError, match="one label per input"):
        fit((x, y[:5]))


@pytest.mark.parametrize("method", ["fgsm-mix", "fast", "pgd", "trades", "free"])
def test_a_budget_warm_up_from_zero_trains(method: str) -> None:
    """The first steps of an eps warm-up have budget 0: the step attacks nothing (it once raised step_size 0)."""
    torch.manual_seed(0)
    x, y = torch.rand(64, 4), torch.randint(0, 2, (64,))
    trainer = rk.AdversarialTrainer(torch.nn.Linear(4, 2), rk.LinfBall(eps=0.1, bounds=(0.0, 1.0)), method,
                                    budget_warmup=1.0, progress=False)
    epochs = 8 if method == "free" else 2  # free replays each batch 4 times and divides the epochs by 4
    history = trainer.fit(DataLoader(TensorDataset(x, y), batch_size=16), epochs)
    assert list(history["epoch"]) == [1, 2] and history["budget"].iloc[-1] == pytest.approx(0.1)


@pytest.mark.parametrize("method", ["standard", "pgd"])
def test_zero_weight_drops_examples(method: str) -> None:
    """sample_weight: weight 0 on a class trains exactly as without its examples; uniform weights change nothing."""
    x, y = robust_nonrobust(240, seed=3)
    order = torch.argsort((y == 2).long(), stable=True)  # class 2 last: the kept examples keep their ids
    x, y = x[order], y[order]
    kept = y != 2

    def fit(*tensors: torch.Tensor) -> torch.nn.Module:
        model = make_model()
        rk.AdversarialTrainer(model, SPACE, method=method, progress=False, seed=1).fit(
            DataLoader(TensorDataset(*tensors), batch_size=len(x)), epochs=3)
        return model

    dropped = fit(x[kept], y[kept])
    zero = fit(x, y, kept.float())
    for a, b in zip(dropped.parameters(), zero.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    unweighted, uniform = fit(x, y), fit(x, y, torch.full((len(x),), 3.0))
    for a, b in zip(unweighted.parameters(), uniform.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert not all(torch.allclose(a, b, atol=1e-3) for a, b in zip(dropped.parameters(), unweighted.parameters(),
                                                                     strict=True))
    with pytest.raises(rk.DataError, match="one weight per example"):
        fit(x, y, torch.ones(len(x), 2))
