"""The report page: one self-contained HTML file (inline CSS, no scripts, no network), figures beside it."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; line-height: 1.45; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ddd; padding: .3em .7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.paper td { color: #555; font-style: italic; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #444; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .4em .8em; font-size: .9em; }
code, pre { background: #f6f6f6; font-size: .85em; } pre { padding: .5em; overflow-x: auto; }
details { margin: .3em 0; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def image_tag(path: Path, alt: str, inline: bool) -> str:
    """<img> of a PNG beside the page (relative src), or inline base64 with ``inline``."""
    if inline:
        src = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    else:
        src = path.name
    return f'<img src="{esc(src)}" alt="{esc(alt)}">'


def figure(path: Path | None, caption: str, inline: bool) -> str:
    if path is None:
        return ""
    return f"<figure>{image_tag(path, caption, inline)}<figcaption>{caption}</figcaption></figure>"


def evaluation_html(table: dict, source: str) -> str:
    settings = table["settings"]
    if not table["rows"]:
        return f"<p>No evaluation: {esc(source)}.</p>"
    head = "".join(f"<th>{w}-way {k}-shot</th>" for w, k in settings)
    body = []
    for row in table["rows"]:
        cells = []
        for setting in settings:
            value = row["cells"].get(setting)
            if value is None:
                cells.append("<td>&ndash;</td>")
            else:
                accuracy, ci = value
                cells.append(f"<td>{accuracy:.2f}" + (f" &plusmn; {ci:.2f}" if ci is not None else "") + "</td>")
        css = ' class="paper"' if row["paper"] else ""
        body.append(f"<tr{css}><td>{esc(row['name'])}</td>{''.join(cells)}</tr>")
    return (f"<table><tr><th>learner</th>{head}</tr>{''.join(body)}</table>"
            f"<p>Accuracy (%) on tasks built from the true labels of the held-out test classes, with the "
            f"half-width of the 95% interval. Source: {esc(source)}.</p>")


def agreement_html(agree: dict) -> str:
    s, chance = agree["summary"], agree["chance"]
    per = agree["partitions"]
    kept = sum(r["kept"] for r in per) / len(per)
    return (
        "<table><tr><th></th><th>adjusted Rand index</th><th>purity</th></tr>"
        f"<tr><td>partition 0 (unscaled embedding)</td><td>{s['ari_0']:.3f}</td><td>{s['purity_0']:.3f}</td></tr>"
        f"<tr><td>mean &plusmn; sd over {len(per)} partitions</td><td>{s['ari_mean']:.3f} &plusmn; "
        f"{s['ari_std']:.3f}</td><td>{s['purity_mean']:.3f} &plusmn; {s['purity_std']:.3f}</td></tr>"
        f"<tr><td>chance (partition 0 vs. shuffled classes)</td><td>{chance['ari']:.3f}</td>"
        f"<td>{chance['purity']:.3f}</td></tr></table>"
        f"<p>{agree['items']} meta-train images of {agree['classes']} true classes; {kept * 100:.1f}% of them in "
        "kept clusters on average (the figures count those).</p>"
        '<p class="note">Diagnostic only: the true labels of the meta-train split are read here, after the '
        "fact, to show what the clusters captured. Nothing of it is fed back into training.</p>"
    )


def artifacts_html(artifacts: dict) -> str:
    rows = []
    for stage, artifact in artifacts.items():
        config = esc(json.dumps(artifact.config, indent=1, sort_keys=True))
        rows.append(f"<tr><td>{esc(stage)}</td><td>{esc(artifact.path.name)}</td><td><code>{artifact.key[:12]}"
                    f"</code></td><td>{esc(artifact.created)}</td><td><details><summary>config</summary>"
                    f"<pre>{config}</pre></details></td></tr>")
    return ("<table><tr><th>stage</th><th>file</th><th>key</th><th>created</th><th>config</th></tr>"
            + "".join(rows) + "</table>")


def page(title: str, sections: list[tuple[str, str]], intro: str) -> str:
    """The whole document: a heading, an introduction and (heading, HTML) sections."""
    parts = [f"<section><h2>{esc(h)}</h2>{body}</section>" for h, body in sections if body]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{intro}{''.join(parts)}</body></html>\n")
