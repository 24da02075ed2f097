"""``report.html`` checked in a real browser: headless Chromium renders the report of a real (small) run of
each domain, and the rendered DOM and a screenshot must show a loaded page, plots that are visible embedded
PNGs, the examples in the domain's own form, and the same key numbers as ``metrics.json``.

Chromium is the Debian package ``chromium`` (``/usr/bin/chromium``); without it every test here skips with
a reason that names chromium (CI installs it and fails on that skip). No network is used: the browser is
started with background networking off, a fresh profile in a temporary folder, and a page whose every
resource is a ``data:`` URI. Layout is measured by a copy of the report with a small script appended that
writes what it measured (image sizes, boxes, styles) into an attribute of ``<html>`` before ``--dump-dom``.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import os
import shlex
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from robustkit.cli import main
from robustkit.evaluation.report import figure_text, heading
from robustkit.reporting import describe_plan

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"chromium not found at {CHROMIUM} (Debian package `chromium`): report.html is not checked in a browser",
)

#: small, fast runs of each real domain (seconds each on one thread): flags and ``options:``
RUNS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "images": (["--epochs", "2", "--budgets", "0.075", "0.15"], {"max_train": 600, "max_val": 100, "max_test": 150}),
    "tabular": (["--epochs", "2"], {"n_rows": 2000}),
    "text": (["--epochs", "2"], {}),
}
WIDTH = 1280  # CSS pixels; the report's body is at most 64em wide, so nothing depends on this
BROWSER_TIMEOUT = 90  # seconds per browser run; the whole process group is killed after it
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: appended to a copy of the report: after every image has loaded, record the layout in <html data-probe>
PROBE = """<script>
addEventListener("load", () => {
  const box = (e) => { const r = e.getBoundingClientRect();
    return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height}; };
  const images = [...document.images].map((img) => { const s = getComputedStyle(img);
    return {id: img.id, alt: img.alt, complete: img.complete, naturalWidth: img.naturalWidth,
            naturalHeight: img.naturalHeight, display: s.display, visibility: s.visibility,
            opacity: Number(s.opacity), ...box(img)}; });
  const blocks = {};
  for (const id of ["summary", "examples", "command", "config", "versions"]) {
    const e = document.getElementById(id); if (e) blocks[id] = box(e); }
  document.documentElement.dataset.probe = JSON.stringify({images, blocks,
    page: {width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight}});
});
</script>"""


# ----------------------------------------------------------------------------- a small DOM
@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str]

    def text(self) -> str:
        """The text inside, a line break for each <br>."""
        return "".join(c if isinstance(c, str) else "\n" if c.tag == "br" else c.text() for c in self.children)

    def iter(self, tag: str | None = None):
        for c in self.children:
            if isinstance(c, Node):
                if tag is None or c.tag == tag:
                    yield c
                yield from c.iter(tag)

    def find(self, tag: str | None = None, **attrs: str) -> Node | None:
        return next(self.find_all(tag, **attrs), None)

    def find_all(self, tag: str | None = None, **attrs: str):
        return (n for n in self.iter(tag) if all(n.attrs.get(k.rstrip("_")) == v for k, v in attrs.items()))


_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
                   "wbr"})


class _TreeBuilder(HTMLParser):

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, [])
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, [])
        self.stack[-1].children.append(node)
        if tag not in _VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):  # close up to the matching element (the DOM is well formed)
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html_text: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(html_text)
    builder.close()
    return builder.root


def squash(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------- the browser
def chromium(url: str, workdir: Path, *, height: int, screenshot: Path | None = None) -> str:
    """Render ``url`` headless; return the DOM after load (and write a screenshot). Killed on timeout."""
    args = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-extensions", "--no-first-run",
        "--no-default-browser-check", "--mute-audio", "--hide-scrollbars", "--force-device-scale-factor=1",
        f"--user-data-dir={tempfile.mkdtemp(prefix='profile-', dir=workdir)}", f"--window-size={WIDTH},{height}",
        "--dump-dom",
    ]
    if screenshot is not None:
        args.append(f"--screenshot={screenshot}")
    env = {**os.environ, "HOME": str(workdir)}  # nothing written to the user's home
    proc = subprocess.Popen([*args, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=BROWSER_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the browser and every helper process it started
        proc.communicate()
        pytest.fail(f"chromium did not finish rendering {url} within {BROWSER_TIMEOUT} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    tail = err.decode(errors="replace")[-2000:]
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}: {tail}"
    assert screenshot is None or screenshot.is_file(), f"chromium wrote no screenshot: {tail}"
    return out.decode("utf-8")


@dataclass
class Rendered:
    domain: str
    run: Path
    argv: list[str]
    metrics: dict[str, Any]
    dom: Node
    layout: dict[str, Any]
    screenshot: np.ndarray  # (height, width, 3) uint8


@pytest.fixture(scope="module", params=sorted(RUNS))
def rendered(request, tmp_path_factory) -> Rendered:
    domain = request.param
    folder = tmp_path_factory.mktemp(f"browser-{domain}")
    flags, options = RUNS[domain]
    argv = ["harden", domain, "--out", str(folder / "run"), "--preset", "quick", "--threads", "1", "--quiet", *flags]
    if options:
        (folder / "options.yaml").write_text(yaml.safe_dump({"options": options}))
        argv += ["--config", str(folder / "options.yaml")]
    assert main(argv) == 0
    run = folder / "run"
    report = (run / "report.html").read_text(encoding="utf-8")
    assert report.count("</body>") == 1
    # 1. a copy with the probe: layout after load, and the page height for the screenshot
    probed = folder / "probed.html"
    probed.write_text(report.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    probe_dom = parse(chromium(probed.as_uri(), folder, height=900))
    html_el = probe_dom.find("html")
    assert html_el is not None and "data-probe" in html_el.attrs, "the page never finished loading"
    layout = json.loads(html_el.attrs["data-probe"])
    # 2. the report itself, in a window as tall as the page: its DOM and a screenshot of all of it
    shot = folder / "report.png"
    dom = parse(chromium((run / "report.html").as_uri(), folder, height=int(layout["page"]["height"]) + 10,
                         screenshot=shot))
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB"))
    metrics = json.loads((run / "metrics.json").read_text())
    return Rendered(domain, run, argv, metrics, dom, layout, pixels)


def pct(v: float) -> str:
    """As the page shows a share (the summary table)."""
    return f"{100 * v:.1f}%"


def non_white(pixels: np.ndarray) -> float:
    return float((pixels.min(axis=2) < 235).mean())


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two RGB pictures' grey levels."""
    x, y = a.mean(axis=2).ravel(), b.mean(axis=2).ravel()
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def section(dom: Node, heading: str) -> list[Node]:
    """The elements after the <h2> ``heading`` up to the next <h2>."""
    body = dom.find("body")
    assert body is not None
    out: list[Node] = []
    inside = False
    for child in body.children:
        if isinstance(child, Node) and child.tag == "h2":
            if inside:
                break
            inside = squash(child.text()) == heading
        elif inside and isinstance(child, Node):
            out.append(child)
    assert inside or out, f"no section {heading!r}"
    return out


def table_rows(table: Node) -> list[list[str]]:
    return [[squash(c.text()) for c in tr.children if isinstance(c, Node) and c.tag in ("td", "th")]
            for tr in table.iter("tr")]


# ----------------------------------------------------------------------------- the tests
def test_page_loaded_with_every_section_and_nothing_from_outside(rendered):
    dom, domain = rendered.dom, rendered.domain
    title = dom.find("title")
    assert title is not None and title.text() == f"robustkit {domain} report"
    h1 = dom.find("h1")
    assert h1 is not None and squash(h1.text()) == f"robustkit harden: {domain}"
    headings = [squash(h.text()) for h in dom.iter("h2")]
    measure = rendered.metrics["models"]["hardened"]["headline"]["measure"]  # recall for fraud and spam
    expected = [f"{measure.capitalize()} under attack vs budget", "Training", "Examples",
                "standard model: attacks and checks", "hardened model: attacks and checks", "Reproduce"]
    if domain in ("images", "tabular"):
        expected.append("Per class or segment")
    assert set(expected) <= set(headings), headings
    # self-contained: no scripts, stylesheets, frames or resources other than data: URIs
    assert not any(True for _ in dom.iter("script")) and not any(True for _ in dom.iter("iframe"))
    assert not any(True for _ in dom.iter("link"))
    for node in dom.iter():
        for attr in ("src", "href"):
            assert node.attrs.get(attr, "data:").startswith(("data:", "#")), node.attrs[attr][:80]


def test_every_image_is_an_embedded_png_that_decodes(rendered):
    images = list(rendered.dom.iter("img"))
    ids = {img.attrs.get("id") for img in images}
    assert {"budget-plot", "history-plot"} <= ids
    if rendered.domain in ("images", "tabular"):
        assert "breakdown-plot" in ids
    for img in images:
        src = img.attrs["src"]
        assert src.startswith("data:image/png;base64,"), src[:40]
        try:
            data = base64.b64decode(src.split(",", 1)[1], validate=True)
        except binascii.Error as exc:
            pytest.fail(f"{img.attrs.get('id') or img.attrs.get('alt')}: not base64 ({exc})")
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            assert im.format == "PNG" and im.width >= 200 and im.height >= 100
            assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 10, "a blank picture"


def test_plots_are_visible_in_the_rendered_page(rendered):
    layout, pixels = rendered.layout, rendered.screenshot
    page = layout["page"]
    assert pixels.shape[1] == WIDTH and pixels.shape[0] >= page["height"] - 2
    assert page["width"] <= WIDTH, "the page scrolls sideways"
    sources = {img.attrs.get("id") or img.attrs["alt"]: img.attrs["src"] for img in rendered.dom.iter("img")}
    assert len(layout["images"]) == len(sources)
    for img in layout["images"]:
        name = img["id"] or img["alt"]
        assert img["complete"] and img["naturalWidth"] > 0, f"{name}: the browser could not decode it"
        assert img["display"] != "none" and img["visibility"] == "visible" and img["opacity"] > 0, name
        assert img["width"] >= 200 and img["height"] >= 80, f"{name} is drawn {img['width']}x{img['height']}"
        assert img["x"] >= 0 and img["x"] + img["width"] <= WIDTH + 1 and img["y"] + img["height"] <= page["height"] + 1
        with Image.open(io.BytesIO(base64.b64decode(sources[name].split(",", 1)[1]))) as png:
            assert (img["naturalWidth"], img["naturalHeight"]) == png.size
            # the screenshot shows that very picture where the image is laid out (not a broken-image box):
            # the browser snaps images to whole pixels, so the crop matches it to within resampling noise
            x0, y0, w, h = (round(img[k]) for k in ("x", "y", "width", "height"))
            drawn = pixels[y0:y0 + h, x0:x0 + w].astype(float)
            expected = np.asarray(png.convert("RGB").resize((w, h), Image.Resampling.BILINEAR), float)
        assert non_white(drawn.astype(np.uint8)) > 0.03, f"{name}: blank where it is drawn"
        assert np.abs(drawn - expected).mean() < 5 and correlation(drawn, expected) > 0.95, \
            f"{name}: the screenshot does not show the embedded picture where the page lays it out"


def test_screenshot_is_not_blank(rendered):
    pixels = rendered.screenshot
    assert non_white(pixels) > 0.05
    top = pixels[: 400]  # heading, verdict and the summary table
    assert non_white(top) > 0.02
    box = rendered.layout["blocks"]["summary"]
    assert box["width"] > 300 and box["height"] > 40 and box["y"] < 400


def test_key_numbers_equal_metrics_json(rendered):
    dom, metrics = rendered.dom, rendered.metrics
    verdict = dom.find("p", id="verdict")
    assert verdict is not None and squash(verdict.text()) == metrics["verdict"]
    summary = dom.find("table", id="summary")
    assert summary is not None
    head = [squash(th.text()) for th in summary.iter("th")]
    shown = {tr.attrs["data-model"]: dict(zip(head, [squash(td.text()) for td in tr.iter("td")], strict=True))
             for tr in summary.iter("tr") if "data-model" in tr.attrs}
    assert set(shown) == set(metrics["models"]) == {"standard", "hardened"}
    recall = any(m["headline"]["measure"] == "recall" for m in metrics["models"].values())
    for name, m in metrics["models"].items():
        row, lead = shown[name], m["headline"]  # the headline leads: recall at the operating threshold for fraud
        assert [row[c] for c in ("model", "measure", "clean", "under the worst attack", "verdict")] == [
            name, lead["measure"], pct(lead["clean"]), pct(lead["attacked"]), m["verdict"]]
        assert row["training seconds"] == f"{m['train_seconds']:.1f}"
        assert row["training"] == describe_plan(m["training"])  # what trained it: the method, epochs or rounds
        if recall:  # then the false-positive rate reached, and accuracy over every row under its own heading
            assert row["false-positive rate"] == pct(lead["false_positive_rate"])
            assert (row["accuracy on all rows, clean"], row["accuracy on all rows, the attacked class attacked"]) == (
                pct(m["clean_accuracy"]), pct(m["robust_accuracy"]["worst"]))
        else:  # accuracy is the headline: no column repeats it, none stays empty
            assert len(row) == 7 and all(row.values())
    # the worst case at the main budget in each model's attack table
    budget = float(metrics["threat"]["budget"])
    for name, m in metrics["models"].items():
        table = next(n for n in section(dom, f"{name} model: attacks and checks") if n.tag == "table")
        head, *rows = table_rows(table)
        worst = [r for r in rows if r[head.index("attack")] == "worst" and float(r[head.index("budget")]) == budget]
        assert len(worst) == 1 and worst[0][head.index("robust accuracy")] == pct(m["robust_accuracy"]["worst"])
    # every scalar domain metric, as the domain-metrics table writes it
    table = dom.find("table", id="domain-metrics")
    expected = {(name, heading(key)): figure_text(key, v) for name, m in metrics["models"].items()
                for key, v in m["domain_metrics"].items() if isinstance(v, int | float | str)}
    if expected:
        assert table is not None
        assert {(r[0], r[1]): r[2] for r in table_rows(table)[1:]} == expected


def test_checks_have_a_plain_verdict_per_model(rendered):
    dom, metrics = rendered.dom, rendered.metrics
    for name in metrics["models"]:
        items = [li for n in section(dom, f"{name} model: attacks and checks") if n.tag == "ul" for li in n.iter("li")]
        assert items and all(li.attrs.get("class") in ("pass", "fail", "na") for li in items)
        if name == "hardened":  # metrics.json holds the checks of the main model
            status = {True: ("pass", "passed"), False: ("fail", "FAILED"), None: ("na", "not applicable")}
            shown = [(li.attrs["class"], squash(next(li.iter("b")).text()), squash(li.text())) for li in items]
            assert shown == [(*status[c["passed"]], squash(f"{status[c['passed']][1]}: {c['name']} {c['detail']}"))
                             for c in metrics["checks"]]


def test_examples_in_the_domains_own_form(rendered):
    dom, domain = rendered.dom, rendered.domain
    nodes = section(dom, "Examples")
    if domain == "images":
        assert any(n.tag == "img" and n.attrs.get("alt") == "grid.png" for n in nodes)
        return
    box = rendered.layout["blocks"].get("examples")
    assert box is not None and box["height"] > 50, "the examples are not drawn"
    examples = dom.find("div", id="examples")
    assert examples is not None
    if domain == "tabular":
        table = examples.find("table", class_="changes")
        assert table is not None
        head, *rows = table_rows(table)
        assert head == ["row", "evades detection", "total cost", "column", "original", "adversarial", "cost"]
        changes = {(str(c["row"]), c["column"]) for c in _csv(rendered.run / "examples" / "changes.csv")}
        row = ""
        for cells in rows:  # the first line of a row carries the row's own cells (rowspan)
            row = cells[0] if len(cells) == 7 else row
            column, original, adversarial, cost = cells[-4:]
            assert (row, column) in changes and float(cost) > 0 and original != adversarial
    else:
        table = examples.find("table", class_="text-pairs")
        assert table is not None and len(table_rows(table)) > 1
        assert any(True for _ in table.iter("mark")), "no edit is highlighted"


def test_reproduce_shows_the_exact_command_config_and_versions(rendered):
    dom, metrics = rendered.dom, rendered.metrics
    command, config, versions = (dom.find(id=i) for i in ("command", "config", "versions"))
    assert command is not None and command.text() == "robustkit " + shlex.join(rendered.argv)
    assert config is not None and config.text() == (rendered.run / "config.yaml").read_text()
    assert versions is not None
    assert all(f"{k} {v}" in versions.text() for k, v in metrics["versions"].items())
    assert all(rendered.layout["blocks"][i]["height"] > 0 for i in ("command", "config", "versions"))


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
