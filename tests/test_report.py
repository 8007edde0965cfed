"""The run report: figures written, the page self-contained, and every image loading in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FIGURES = {"embedding_map", "tasks", "cluster_sizes", "agreement", "meta_curves", "evaluation"}


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory):
    """A small digits run with ``--report``: (run folder, run summary)."""
    out = tmp_path_factory.mktemp("reported")
    result = run_cli("run", "--out-dir", str(out), "--partitions", "5", "--iterations", "60", "--eval-tasks", "100",
                     "--threads", "1", "--report", "--json")
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def image_sources(page: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]+)"', page)


def test_run_report_writes_page_figures_and_summary(reported_run):
    out, run_summary = reported_run
    page = (out / "report.html").read_text()
    summary = json.loads((out / "report.json").read_text())
    assert set(summary["figures"]) == FIGURES
    from PIL import Image

    for path in summary["figures"].values():
        with Image.open(path) as image:  # a real PNG, not an empty file
            assert image.format == "PNG" and min(image.size) > 100
    assert sorted(image_sources(page)) == sorted(Path(p).name for p in summary["figures"].values())
    # self-contained: no scripts, no stylesheet or image from the network
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)
    # the evaluation is the run's own (evaluation.json, same keys), shown with its interval
    assert "evaluation.json" in summary["evaluation"]["source"]
    first = run_summary["evaluation"][0]["results"][0]
    assert f"{first['accuracy']:.2f} &plusmn; {first['ci95']:.2f}" in page
    assert "(ACAI), paper" not in page  # the paper's rows are for Omniglot only


def test_agreement_of_partitions_is_reported_and_meaningful(reported_run):
    out, _ = reported_run
    agreement = json.loads((out / "report.json").read_text())["agreement"]
    # PCA clusters of digits agree with the digit classes far beyond chance (a shuffled labelling)
    assert agreement["ari_0"] > agreement["chance"]["ari"] + 0.1
    assert agreement["purity_mean"] > agreement["chance"]["purity"] + 0.2
    assert agreement["classes"] == 10


def test_purity_and_ari_on_known_labellings():
    from cactus.report.collect import agreement, purity

    classes = np.repeat(np.arange(4), 25)
    assert purity(classes, classes) == 1.0
    merged = classes // 2  # two clusters, each holding two classes of 25
    assert purity(merged, classes) == pytest.approx(0.5)
    result = agreement(np.stack([classes, merged, np.where(classes == 0, -1, classes)]), classes)
    aris = [p["ari"] for p in result["partitions"]]
    assert aris[0] == pytest.approx(1.0) and 0 < aris[1] < 1 and aris[2] == pytest.approx(1.0)
    assert result["partitions"][2]["kept"] == pytest.approx(0.75)  # dropped items are not counted
    assert abs(result["chance"]["ari"]) < 0.1


def test_omniglot_table_puts_the_papers_numbers_beside_ours():
    from cactus.report.collect import evaluation_table

    ours = [{"learner": "protonets", "supervised": False,
             "results": [{"ways": 5, "shots": 1, "accuracy": 61.0, "ci95": 0.8}]}]
    table = evaluation_table(ours, omniglot=True)
    assert table["settings"] == [(5, 1), (5, 5), (20, 1), (20, 5)]
    paper = {row["name"]: row["cells"] for row in table["rows"] if row["paper"]}
    assert paper["CACTUs-MAML (ACAI), paper"][(20, 5)] == (73.36, None)
    assert paper["CACTUs-ProtoNets (ACAI), paper"][(5, 1)] == (68.12, None)
    assert not any(row["paper"] for row in evaluation_table(ours, omniglot=False)["rows"])


def test_stale_evaluation_json_is_not_shown(reported_run, tmp_path):
    out, _ = reported_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    saved = json.loads((copy / "evaluation.json").read_text())
    saved["stages"][3]["key"] = "0" * 64  # as if learner.h5 had been remade since
    (copy / "evaluation.json").write_text(json.dumps(saved))
    result = run_cli("report", str(copy), "--no-evaluate", "--inline", "--json", "-o", str(tmp_path / "one.html"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["evaluation"]["reports"] == [] and "not evaluated" in summary["evaluation"]["source"]
    page = (tmp_path / "one.html").read_text()
    sources = image_sources(page)
    assert len(sources) == len(FIGURES) - 1 and all(s.startswith("data:image/png;base64,") for s in sources)


def test_report_of_a_folder_without_artifacts_is_one_clear_line(tmp_path):
    result = run_cli("report", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and str(tmp_path) in result.stderr


PROBE = """<script>
window.addEventListener('load', function () {
  var seen = Array.prototype.map.call(document.images, function (img) {
    return {src: img.getAttribute('src').slice(0, 60), complete: img.complete, width: img.naturalWidth};
  });
  var out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify(seen);
  document.body.appendChild(out);
});
</script>"""


def images_in_chromium(page: Path, profile: Path) -> list[dict]:
    """Open ``page`` in headless Chromium; naturalWidth of each <img> after the load event."""
    probe = page.with_name(f"probe_{page.name}")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-extensions", f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom",
               probe.resolve().as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    probe.unlink()
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert found, f"chromium gave no probe output: {result.stderr[-2000:]}"
    import html

    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package chromium)")
def test_every_figure_loads_in_headless_chromium(reported_run, tmp_path):
    out, _ = reported_run
    page = tmp_path / "page" / "report.html"
    shutil.copytree(out, page.parent)
    images = images_in_chromium(page, tmp_path / "profile")
    assert len(images) == len(FIGURES)
    broken = [i for i in images if not i["complete"] or i["width"] == 0]
    assert not broken, broken
    # the probe does see a broken image: one figure gone -> reported with naturalWidth 0
    (page.parent / "report_tasks.png").unlink()
    images = images_in_chromium(page, tmp_path / "profile")
    assert [i["src"] for i in images if i["width"] == 0] == ["report_tasks.png"]
