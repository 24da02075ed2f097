"""Every HTML output comes from robustkit.rendering: styles scoped to the root element (a notebook cell cannot
restyle the page around it), every value escaped, and no HTML written by hand in Python."""

from __future__ import annotations

import ast
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from domains.tabular import TabularDomain
from domains.text import TextDomain, _with_words
from robustkit.domain import Examples
from robustkit.evaluation import RobustnessReport
from robustkit.quickstart import write_index
from robustkit.rendering import ROOT, render
from robustkit.reporting import write_reports

HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
REPO = Path(__file__).resolve().parent.parent


class _Outline(HTMLParser):
    """The elements at the top level of a document or fragment, the stylesheets and every <script>."""

    VOID = frozenset({"br", "img", "meta", "link", "hr", "input"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth, self.top, self.styles, self.scripts = 0, [], [], 0
        self.tags: list[tuple[str, dict[str, str]]] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        self.tags.append((tag, attributes))
        if self.depth == 0:
            self.top.append((tag, attributes))
        self.scripts += tag == "script"
        self._in_style = tag == "style"
        if tag not in self.VOID:
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        self.depth -= 1
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)
        elif self.depth == 0 and data.strip():
            self.top.append(("#text", {"text": data}))


def outline(page: str) -> _Outline:
    parser = _Outline()
    parser.feed(page)
    parser.close()
    return parser


def selectors(css: str) -> list[str]:
    """Every selector of a stylesheet without at-rules (an @media or @import would escape this check)."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    assert "@" not in css, "at-rules are not allowed in robustkit.css"
    rules = re.findall(r"([^{}]+)\{[^{}]*\}", css)
    assert re.sub(r"[^{}]+\{[^{}]*\}", "", css).strip() == "", "unparsed CSS left over"
    return [s.strip() for rule in rules for s in rule.split(",")]


def _report(name: str = "pgd", text: str = "robust at budget 0.1") -> RobustnessReport:
    entry = {"robust_accuracy": 0.5, "attack_success_rate": 0.4, "forward_passes": 10, "backward_passes": 8,
             "seconds": 0.1}
    return RobustnessReport.from_json({
        "clean_accuracy": 0.9, "robust_accuracy": {name: 0.5, "worst": 0.5},
        "per_budget": [{"budget": 0.1, "attacks": {name: entry, "worst": entry}}],
        "checks": [{"name": text, "passed": False, "detail": text}], "attacks": {name: {"steps": text}},
        "verdict": text, "threat": {"space": "linf", "budget": 0.1}, "n_examples": 10})


def _metrics(domain: str, model: str, text: str) -> dict[str, Any]:
    entry = {"clean_accuracy": 0.9, "robust_accuracy": {"worst": 0.5}, "verdict": text, "train_seconds": 1.0,
             "domain_metrics": {text: text},
             "headline": {"measure": "recall", "clean": 0.8, "attacked": 0.6, "false_positive_rate": 0.01}}
    return {"domain": domain, "command": "harden", "dataset": {"name": text},
            "threat": {"space": "linf", "budget": 0.1}, "seed": 0, "verdict": text, "models": {model: entry},
            "versions": {text: text}, "attacks": [text]}


def _tabular_examples(directory: Path, column: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"index": [3, 5], "fooled": [False, True], "cost": [0.5, 1.25]}).set_index("index").to_csv(
        directory / "examples.csv")
    pd.DataFrame({"row": [3, 5, 5], "column": [column, "amount", "merchant"], "original": [1.0, column, 3],
                  "adversarial": [2.0, "y", 4], "cost": [0.5, 1, 0.25]}).to_csv(directory / "changes.csv", index=False)
    return directory


def _text_examples(directory: Path, text: str) -> Path:
    """examples/ as TextDomain.write_examples leaves it: one edited pair (an invisible character, a
    look-alike word), one untouched."""
    x = [f"win {text} cash now", "see you at lunch"]
    x_adv = [f"w\u200bin {text} c@sh now", "see you at lunch"]
    y = torch.tensor([1, 1])
    TextDomain().write_examples(directory, Examples(x, x_adv, y, y.clone(), torch.tensor([0, 1]),
                                                    torch.tensor([True, False])), None)  # type: ignore[arg-type]
    return directory


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, str]:
    """Every page and fragment robustkit renders, each showing hostile names, labels and texts."""
    tmp = tmp_path_factory.mktemp("rendering")
    report = _report(HOSTILE, HOSTILE)
    run = tmp / "run"
    run.mkdir()
    write_reports(run, _metrics(HOSTILE, HOSTILE, HOSTILE), {HOSTILE: report}, pd.DataFrame(), HOSTILE, HOSTILE,
                  examples_html=HOSTILE)
    tabular_run = tmp / "tabular"
    tabular_run.mkdir()
    fragment = TabularDomain().examples_html(_tabular_examples(tmp / "tabular-examples", HOSTILE))
    write_reports(tabular_run, _metrics("tabular", "hardened", "x"), {"hardened": _report()}, pd.DataFrame(), "", "",
                  examples_html=fragment)
    write_index(tmp, {HOSTILE: _metrics(HOSTILE, HOSTILE, HOSTILE)}, {HOSTILE: 1.0})
    text = _text_examples(tmp / "text-examples", HOSTILE)
    return {
        "report.html": (run / "report.html").read_text(encoding="utf-8"),
        "report.html with tabular examples": (tabular_run / "report.html").read_text(encoding="utf-8"),
        "index.html": (tmp / "index.html").read_text(encoding="utf-8"),
        "RobustnessReport.to_html": report.to_html(),
        "RobustnessReport._repr_html_": report._repr_html_(),
        "tabular examples_html": str(fragment),
        "text examples_html": str(TextDomain().examples_html(text)),
        "text examples.html": (text / "examples.html").read_text(encoding="utf-8"),
    }


def test_every_style_rule_is_scoped_to_the_root_element_the_output_carries(outputs) -> None:
    """report._repr_html_ styled body, table and img of the whole notebook (bare selectors in its <style>)."""
    root = re.compile(rf"^\.{re.escape(ROOT)}(?![\w-])")
    for name, page in outputs.items():
        parsed = outline(page)
        assert all(root.match(s) for css in parsed.styles for s in selectors(css)), name
        if name.endswith("examples_html"):  # a fragment inside report.html: no styles of its own
            assert not parsed.styles, name
            continue
        assert parsed.styles, f"{name} has no stylesheet"
        if page.lstrip().lower().startswith("<!doctype"):
            body = next(attrs for tag, attrs in parsed.tags if tag == "body")
            assert ROOT in body.get("class", "").split(), name
        else:  # a notebook fragment: one element holds everything, the stylesheet too
            assert [tag for tag, _ in parsed.top] == ["div"], f"{name}: {parsed.top}"
            assert ROOT in parsed.top[0][1]["class"].split(), name


def test_hostile_names_labels_and_texts_are_shown_escaped_everywhere(outputs) -> None:
    for name, page in outputs.items():
        parsed = outline(page)
        assert parsed.scripts == 0 and "<script" not in page.lower(), f"{name} runs a script"
        assert "&amp;lt;" not in page, f"{name} escapes twice"
        if name != "report.html with tabular examples":  # its model, verdict and command are harmless
            assert ESCAPED in page, f"{name} does not show the hostile text"
    # the domain's markup is embedded as markup; the plain string in its place was shown as text
    tabular = outline(outputs["report.html with tabular examples"])
    assert any(tag == "table" and attrs.get("class") == "changes" for tag, attrs in tabular.tags)
    assert ESCAPED in outputs["report.html"].split('<div id="examples">', 1)[1].split("</div>", 1)[0]
    index = outputs["index.html"]
    assert 'href="%3Cscript%3Ealert%281%29%3C/script%3E/report.html"' in index  # a link to its folder, quoted


def test_text_fragment_marks_exactly_the_edited_words() -> None:
    """The words the attack put in are marked with their folded form (invisible characters shown as [ZW], a
    Cyrillic look-alike folded to Latin), the rest of the text is not."""
    rows = [{"label": "spam", "pred_clean": "spam", "pred_adversarial": "ham", "original": "win big cash now",
             "adversarial": "w\u200bin big c\u0430sh now"}]
    html = render("examples.html.j2", "domains.text", n_edited=1, n_rows=2, rows=_with_words(rows))
    cell = html.split('<td class="l">')[-1].split("</td>")[0]
    assert cell == ('<mark title="win">w<span class="zw">[ZW]</span>in</mark> big '
                    '<mark title="cash">c\u0430sh</mark> now')
    assert html.startswith("<p>1 of 2 example texts edited by the attack; the first 1:</p>")


_TAG = re.compile(r"<\s*/?\s*(html|head|body|style|table|tr|td|th|div|span|p|h[1-6]|ul|li|img|pre|mark|a|b)[\s>/]",
                  re.I)


def test_no_html_is_written_by_hand_in_python() -> None:
    """Markup lives in the templates: no string in robustkit/ or domains/ (docstrings aside) holds an HTML tag."""
    found = []
    for path in sorted([*REPO.glob("robustkit/**/*.py"), *REPO.glob("domains/**/*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        found += [f"{path.relative_to(REPO)}:{node.lineno}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                  and _TAG.search(node.value)]
    assert not found, f"HTML built in Python (render a template from robustkit.rendering instead): {found}"


def test_html_tag_pattern_finds_what_the_code_used_to_build() -> None:
    """The scan above would have caught the f-strings that built the pages before."""
    assert _TAG.search("<tr><td class=l>") and _TAG.search("<h2>Training</h2>") and _TAG.search("<mark title='x'>")
    assert not _TAG.search("OUT/index.html") and not _TAG.search("a <= b and c > d")
