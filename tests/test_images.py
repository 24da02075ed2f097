"""The images domain end to end on the bundled digits, its models, and what it says about bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from torch import nn

import robustkit as rk
from domains.images import ImageClassifier, ImagesDomain, ImagesOptions, build, images_dataset, load_model, save_model
from robustkit.cli import main

#: a fast recipe: FGSM from a random start ("fast") instead of PGD, ten epochs, the quick attack preset
RECIPE = {"domain": "images", "data": "digits", "method": "fast", "epochs": 10, "batch_size": 32, "preset": "quick"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    config = folder / "recipe.yaml"
    config.write_text(yaml.safe_dump(RECIPE))
    out = folder / "run"
    assert main(["harden", "images", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    return out


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_hardened_model_is_far_more_robust_at_the_same_budget(run):
    m = metrics(run)
    assert m["domain"] == "images" and m["dataset"]["name"] == "digits" and len(m["dataset"]["sha256"]) == 64
    assert m["threat"]["space"] == "linf" and m["threat"]["budget"] == ImagesDomain.default_budget
    standard, hardened = m["models"]["standard"], m["models"]["hardened"]
    assert standard["clean_accuracy"] > 0.9 and hardened["clean_accuracy"] > 0.9
    assert hardened["robust_accuracy"]["worst"] > standard["robust_accuracy"]["worst"] + 0.3
    per_class = hardened["domain_metrics"]["robust_accuracy_per_class"]
    assert list(per_class) == [str(k) for k in range(10)] and all(0 <= v <= 1 for v in per_class.values())
    assert 'id="breakdown-plot"' in (run / "report.html").read_text(), "per-class bars in the report"
    mean = sum(per_class.values()) / 10
    assert abs(mean - hardened["robust_accuracy"]["worst"]) < 0.03, "per-class figures are the report's worst case"


def test_adversarial_images_stay_inside_the_threat_model_and_the_pixel_range(run):
    ex = load_file(str(run / "examples" / "examples.safetensors"))
    budget = metrics(run)["threat"]["budget"]
    x, x_adv = ex["x"], ex["x_adv"]
    assert x.shape == x_adv.shape == (16, 1, 8, 8) and bool(ex["success"].any())
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float((x_adv - x).abs().max()) <= budget + 1e-6
    assert bool(rk.LinfBall(eps=budget, bounds=(0.0, 1.0)).contains(x_adv, x).all())
    grid = Image.open(run / "examples" / "grid.png")
    # 16 images in two bands of 8, each image at least 64 pixels: the report shows it near its own size
    assert grid.mode == "RGB" and 8 * 64 < grid.size[0] <= 1024 and grid.size[1] > 2 * 3 * 64
    rows = list(csv.DictReader((run / "examples" / "examples.csv").open()))
    assert len(rows) == 16 and {r["fooled"] for r in rows} <= {"True", "False"}
    fooled = [r for r in rows if r["fooled"] == "True"]
    assert fooled and all(r["adversarial_prediction"] != r["label"] for r in fooled)
    assert 'alt="grid.png"' in (run / "report.html").read_text()


def test_evaluate_and_attack_a_saved_model(run, tmp_path):
    ev = tmp_path / "ev"
    assert main(["evaluate", "images", "--model", str(run), "--out", str(ev), "--preset", "quick", "--quiet"]) == 0
    hardened = metrics(run)["models"]["hardened"]
    assert metrics(ev)["models"]["evaluated"]["robust_accuracy"] == hardened["robust_accuracy"]
    at = tmp_path / "at"
    standard = run / "models" / "standard"
    assert main(["attack", "images", "--model", str(standard), "--out", str(at), "--preset", "quick", "--quiet"]) == 0
    m = metrics(at)
    ex = load_file(str(at / "examples" / "examples.safetensors"))
    assert m["examples"]["n"] == len(ex["x"]) == 449 and m["examples"]["successes"] > 300
    assert bool(rk.LinfBall(eps=m["threat"]["budget"], bounds=(0.0, 1.0)).contains(ex["x_adv"], ex["x"]).all())
    model = load_model(standard)
    with torch.no_grad():
        assert (model(ex["x_adv"]).argmax(1) != ex["y"])[ex["success"]].all()


def test_l2_threat_model():
    domain = ImagesDomain()
    data = domain.load_data("digits", seed=0, options=ImagesOptions(norm='l2', max_test=40))
    space = domain.space(1.0, data)
    assert isinstance(space, rk.L2Ball) and space.eps == 1.0
    torch.manual_seed(0)
    model = domain.build_model(domain.model_spec(data, ImagesOptions())).eval()
    x, y = data.test.x, data.test.y
    result = rk.PGD(space, steps=5)(model, x, y)
    assert bool(space.contains(result.x_adv, x).all())
    assert float((result.x_adv - x).flatten(1).norm(dim=1).max()) <= 1.0 + 1e-5


def test_models_save_and_load_as_safetensors(tmp_path):
    torch.manual_seed(0)
    for spec, shape in (
        ({"kind": "small-cnn", "channels": 1, "size": 28, "classes": 10, "mean": [0.1], "std": [0.3]}, (2, 1, 28, 28)),
        ({"kind": "preact-resnet18", "channels": 3, "size": 32, "classes": 10}, (2, 3, 32, 32)),
    ):
        model = build(spec).eval()
        folder = tmp_path / spec["kind"]
        save_model(model, folder)
        assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors"]
        again = load_model(folder)
        x = torch.rand(shape)
        with torch.no_grad():
            assert torch.equal(model(x), again(x)) and again.spec == model.spec
    with pytest.raises(rk.ConfigError, match="save_model writes robustkit image models"):
        save_model(nn.Linear(2, 2), tmp_path / "linear")


def test_any_module_mapping_pixels_to_logits_works():
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1))

    data = ImagesDomain().load_data("digits", seed=0, options=ImagesOptions(max_test=30))
    report = rk.evaluate(Tiny(), (data.test.x, data.test.y), rk.LinfBall(eps=0.1, bounds=(0.0, 1.0)),
                         attacks="quick", checks=False)
    assert 0.0 <= report.robust_accuracy["worst"] <= report.clean_accuracy


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2, 8, 8), r"add the channel axis with x.unsqueeze\(1\)"),
        ((2, 8, 8, 1), r"channels come last; use x.permute\(0, 3, 1, 2\)"),
        ((2, 3, 8, 8), "3 channels given.*trained on grey images"),
        ((2, 1, 28, 28), "resize the images to 8x8"),
    ],
)
def test_images_of_the_wrong_shape_are_a_clear_error(shape, message):
    model = build({"kind": "small-cnn", "channels": 1, "size": 8, "classes": 10})
    with pytest.raises(rk.DataError, match=message):
        model(torch.rand(shape))


def test_pixels_outside_the_unit_range_are_a_clear_error():
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(rk.DataError, match=r"x / 255"):
        images_dataset(x * 255, y)
    with pytest.raises(rk.DataError, match=r"x.float\(\) / 255"):
        images_dataset((x * 255).to(torch.uint8), y)
    with pytest.raises(rk.DataError, match="not normalised ones"):
        images_dataset(x - 0.5, y)
    with pytest.raises(rk.DataError, match="unsqueeze"):
        images_dataset(x[:, 0], y)
    assert len(images_dataset(x, y)) == 4
    model = build({"kind": "small-cnn", "channels": 1, "size": 8, "classes": 10})
    with pytest.raises(rk.DataError, match="divide by 255"):
        rk.evaluate(model, (x * 255, y), rk.LinfBall(eps=0.1, bounds=(0.0, 1.0)), attacks="quick")


def test_evaluating_a_model_on_images_it_does_not_take_is_one_line(run, tmp_path, capsys):
    folder = tmp_path / "colour"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / name / f"{i}.png")
    out = tmp_path / "out"
    code = main(["evaluate", "images", "--model", str(run), "--data", f"folder:{folder}", "--out", str(out),
                 "--preset", "quick", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "3 channels given" in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"norm": "l1"}, "options.norm must be one of linf, l2, got 'l1'"),
        ({"nrom": "l2"}, "unknown images option 'nrom'"),
        ({"max_train": 0}, "options.max_train must be an integer >= 1"),
        ({"val_fraction": 1.5}, "options.val_fraction must be a number between 0 and 1"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(rk.ConfigError, match=message):
        ImagesDomain().parse_options(options)


def test_bad_model_specs():
    with pytest.raises(rk.ConfigError, match="unknown image model kind"):
        build({"kind": "vit", "channels": 1, "size": 8, "classes": 10})
    with pytest.raises(rk.ConfigError, match="'channels' must be an integer"):
        build({"kind": "small-cnn", "channels": 0, "size": 8, "classes": 10})
    with pytest.raises(rk.ConfigError, match="one number per channel"):
        build({"kind": "small-cnn", "channels": 3, "size": 8, "classes": 10, "mean": [0.5]})
    data = ImagesDomain().load_data("digits", seed=0, options=ImagesOptions(max_test=10))
    with pytest.raises(rk.ConfigError, match=r"options\.model must be one of"):
        ImagesDomain().model_spec(data, ImagesOptions(model='vit'))
    assert isinstance(ImagesDomain().build_model(ImagesDomain().model_spec(data, ImagesOptions())), ImageClassifier)


def test_missing_data_folder_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["harden", "images", "--data", f"mnist:{tmp_path / 'nope'}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustkit: error:") and "does not exist" in err and not out.exists()
