"""The report page: one self-contained HTML file (inline CSS and SVG, no script, no fetches).

Pure. Called by `report.writer` with the report document (`report.document`) and each figure's
SVG (`report.render`); the page reads offline, from a local disk or a downloaded S3 object.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

CSS = """
body { font-family: system-ui, "DejaVu Sans", sans-serif; margin: 0 auto; max-width: 60rem;
       padding: 1rem 1.5rem 3rem; color: #1d2330; line-height: 1.45; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
h2 { border-bottom: 1px solid #d0d5de; padding-bottom: 0.2rem; margin-top: 2.2rem; }
.meta { color: #5a6270; font-size: 0.85rem; word-break: break-all; }
.headline { display: flex; flex-wrap: wrap; gap: 0.8rem; margin: 1rem 0; }
.headline div { background: #f2f4f8; border-radius: 6px; padding: 0.5rem 0.9rem; }
.headline b { display: block; font-size: 1.3rem; }
.warnings li { background: #fff4e0; border-left: 4px solid #e08a00; padding: 0.4rem 0.7rem;
               margin: 0.4rem 0; list-style: none; }
.warnings ul { padding: 0; }
.ok { background: #e9f6ec; border-left: 4px solid #2e8b57; padding: 0.4rem 0.7rem; }
nav a { margin-right: 0.9rem; }
figure { margin: 1.2rem 0; }
figure svg { max-width: 100%; height: auto; }
figcaption { font-size: 0.85rem; color: #3b4250; margin-bottom: 0.3rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.8rem 0; }
th, td { border: 1px solid #d0d5de; padding: 0.2rem 0.5rem; text-align: left; }
th { background: #f2f4f8; }
caption { text-align: left; font-weight: 600; padding: 0.3rem 0; }
"""


def _cell(value: Any) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:g}"
    return escape(str(value))


def table_html(table: Mapping[str, Any]) -> str:
    head = "".join(f"<th>{escape(str(c))}</th>" for c in table["columns"])
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in table["rows"]
    )
    return (
        f'<table id="table-{escape(table["id"])}"><caption>{escape(table["title"])}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def figure_html(figure: Mapping[str, Any], svg: str) -> str:
    figure_id = escape(figure["id"])
    return (
        f'<figure class="plot" id="fig-{figure_id}" data-figure="{figure_id}">'
        f"<figcaption><strong>{escape(figure['title'])}.</strong> {escape(figure['caption'])}"
        f"</figcaption>{svg}</figure>"
    )


def _headline(document: Mapping[str, Any]) -> str:
    headline = document["headline"]
    items = [
        ("prompts", headline["prompts"]),
        ("prompts with a pair", headline["prompts_with_pairs"]),
        ("pairs", headline["pairs"]),
        ("acceptance", "met" if headline["accepted"] else "failed"),
        ("items lost", sum(headline["losses"].values())),
        ("warnings", len(document["warnings"])),
    ]
    return (
        '<div class="headline">'
        + "".join(f"<div><b>{escape(str(v))}</b>{escape(k)}</div>" for k, v in items)
        + "</div>"
    )


def _warnings(document: Mapping[str, Any]) -> str:
    warnings = document["warnings"]
    if not warnings:
        return (
            '<section class="warnings" id="warnings"><p class="ok">No warnings: the judge '
            "shows no strong position or length bias, no rating collapse, and few "
            "failures.</p></section>"
        )
    items = "".join(
        f'<li class="warning" data-kind="{escape(w["kind"])}">{escape(w["message"])}</li>'
        for w in warnings
    )
    return f'<section class="warnings" id="warnings"><h2>Warnings</h2><ul>{items}</ul></section>'


def page(document: Mapping[str, Any], svgs: Mapping[str, str]) -> str:
    """The whole HTML page; `svgs` maps every figure id to its SVG element."""
    run = document["run"]
    meta = " &middot; ".join(
        f"{escape(label)}: {escape(str(run[key]))}"
        for key, label in (
            ("storage", "storage"),
            ("dataset", "dataset"),
            ("started", "started"),
            ("finished", "finished"),
            ("generated_at", "report written"),
        )
        if run.get(key)
    )
    nav = " ".join(
        f'<a href="#{escape(s["id"])}">{escape(s["title"])}</a>' for s in document["sections"]
    )
    sections = []
    for section in document["sections"]:
        parts = [f'<section id="{escape(section["id"])}"><h2>{escape(section["title"])}</h2>']
        parts += [f"<p>{escape(line)}</p>" for line in section.get("text", [])]
        parts += [
            f'<ul class="warnings"><li class="warning" data-kind="{escape(w["kind"])}">'
            f"{escape(w['message'])}</li></ul>"
            for w in section.get("warnings", [])
        ]
        parts += [figure_html(f, svgs[f["id"]]) for f in section["figures"]]
        parts += [table_html(t) for t in section.get("tables", [])]
        parts.append("</section>")
        sections.append("".join(parts))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(document['title'])}</title><style>{CSS}</style></head><body>"
        f'<header><h1>{escape(document["title"])}</h1><p class="meta">{meta}</p></header>'
        f"{_headline(document)}{_warnings(document)}<nav>{nav}</nav>{''.join(sections)}"
        '<footer class="meta"><p>Every number on this page is in report.json beside it; how '
        "the run was made (spec, models, judge, templates, seeds, package versions) is in "
        "dataset/provenance.json.</p></footer></body></html>\n"
    )
