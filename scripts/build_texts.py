#!/usr/bin/env python3
"""Build the evaluation and calibration texts from the raw assets (fetched by scripts/fetch-assets.sh).

Outputs in --out:
  eval.txt         Wikipedia articles of the gensim enwiki dump, prose only, WikiText-raw style
                   headings (" = Title = ", " = = Section = = ").
  eval_titles.txt  one eval article title per line.
  calib.txt        ovos summaries' `extract` fields joined with blank lines, minus any article whose
                   title is also an eval title.
  eval2.txt        lee_background.cor articles separated by blank lines (evaluation only).

Needs mwparserfromhell. Deterministic: same inputs give byte-identical outputs.
"""
import argparse
import bz2
import html
import json
import os
import re
import sys
import xml.etree.ElementTree as ET

import mwparserfromhell as mwp
from mwparserfromhell import nodes

# Tags whose whole content is dropped (references, tables, media, code, maths, ...).
DROP_TAGS = {
    "ref", "references", "table", "tr", "td", "th", "caption", "gallery", "math", "chem", "ce",
    "timeline", "imagemap", "syntaxhighlight", "source", "pre", "score", "hiero", "graph",
    "mapframe", "maplink", "templatedata", "nowiki", "noinclude", "includeonly", "sup", "sub",
}
# Wikilink namespaces that are not prose (files, categories, interlanguage links, ...).
DROP_LINK_NS = {"file", "image", "media", "category", "wikipedia", "wp", "template", "help",
                "portal", "special", "user", "talk", "wikt", "wiktionary", "s", "commons", "q",
                "wikiquote", "wikisource", "b", "n", "v", "meta", "m", "mw", "species", "d"}
# Trailing sections that are lists of references or links rather than prose.
DROP_SECTIONS = {"references", "external links", "see also", "further reading", "notes",
                 "bibliography", "sources", "footnotes", "citations", "notes and references",
                 "works cited", "external link", "reference", "links", "gallery",
                 "literature", "publications", "discography", "filmography", "selected works",
                 "works", "cited sources", "general references", "primary sources"}

HEADING_MARK = "\x00H{}\x00"


def link_namespace(title: str):
    if ":" not in title:
        return None
    ns = title.split(":", 1)[0].strip().lower()
    return ns


def render(wc) -> str:
    out = []
    for node in wc.nodes:
        if isinstance(node, nodes.Text):
            out.append(str(node.value))
        elif isinstance(node, (nodes.Template, nodes.Comment, nodes.Argument)):
            continue
        elif isinstance(node, nodes.HTMLEntity):
            out.append(node.normalize())
        elif isinstance(node, nodes.Heading):
            title = " ".join(render(node.title).split())
            out.append("\n" + HEADING_MARK.format(node.level) + title + "\n")
        elif isinstance(node, nodes.Wikilink):
            title = str(node.title).strip()
            ns = link_namespace(title)
            if ns is not None and (ns in DROP_LINK_NS or len(ns) <= 3 and ns.isalpha() or "-" in ns):
                # namespaced or interlanguage link ("fr:", "zh-min-nan:")
                continue
            if node.text is not None:
                out.append(render(node.text))
            else:
                out.append(title.split("#", 1)[0].lstrip(":"))
        elif isinstance(node, nodes.ExternalLink):
            if node.title is not None:
                out.append(render(node.title))
            elif not node.brackets:
                out.append(str(node.url))
        elif isinstance(node, nodes.Tag):
            tag = str(node.tag).strip().lower()
            if tag in DROP_TAGS:
                continue
            if tag == "br":
                out.append("\n")
            elif tag in ("li", "dt", "dd") and node.wiki_markup:
                out.append("\n\x00L")  # list item marker: its text follows as siblings
            elif tag == "hr":
                out.append("\n")
            elif node.contents is not None:
                out.append(render(node.contents))
        else:
            out.append(str(node))
    return "".join(out)


# Leftovers the parser kept as text (unbalanced markup): removed from the rendered body.
RESIDUE = [
    (re.compile(r"<ref[^>]*/>", re.I), ""),
    (re.compile(r"<ref[^>]*>.*?</ref\s*>", re.I | re.S), ""),
    (re.compile(r"\[\[(?:File|Image|Category):(?:[^\[\]]|\[\[[^\[\]]*\]\])*\]\]", re.I | re.S), ""),
    (re.compile(r"\[\[(?:[^\[\]|]*\|)?([^\[\]|]*)\]\]"), r"\1"),
    (re.compile(r"\{\{[^{}]*\}\}"), ""),
    (re.compile(r"\[https?://\S+ ([^\]]*)\]"), r"\1"),
    (re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>"), ""),
]


def strip_residue(body: str) -> str:
    for pat, rep in RESIDUE:
        body = pat.sub(rep, body)
    return body


def clean_line(line: str) -> str:
    line = html.unescape(line)
    line = re.sub(r"\(\s*[,;]?\s*\)", "", line)  # "()" left by dropped templates
    line = re.sub(r"\s+", " ", line).strip()
    line = re.sub(r" ([,.;:])", r"\1", line)
    return line


def is_prose(line: str) -> bool:
    if not line or line.startswith(("{|", "|", "!", "{{", "}}", "__")):
        return False
    return any(c.isalpha() for c in line)


def article_to_wikitext_raw(title: str, text: str) -> str:
    body = strip_residue(render(mwp.parse(text)))
    sections = [(1, title, [])]  # (level, heading, lines)
    for raw in body.split("\n"):
        if raw.startswith("\x00H"):
            level = int(raw[2])
            heading = clean_line(raw[4:])
            sections.append((level, heading, []))
            continue
        is_item = raw.startswith("\x00L")
        line = clean_line(raw.replace("\x00L", "").lstrip("*#:; "))
        if not is_prose(line):
            continue
        if is_item and len(line.split()) < 5:
            continue  # short list items are link lists, not prose
        sections[-1][2].append(line)

    out = []
    dropping_level = None
    for level, heading, lines in sections:
        if dropping_level is not None and level > dropping_level:
            continue
        dropping_level = None
        if level > 1 and heading.lower() in DROP_SECTIONS:
            dropping_level = level
            continue
        if level > 1 and not lines:
            continue
        marks = " ".join(["="] * level)
        out.append(f" {marks} {heading} {marks} \n")
        out.append(" \n")
        for line in lines:
            out.append(f" {line} \n")
        out.append(" \n")
    return "".join(out)


def norm_title(t: str) -> str:
    return " ".join(t.replace("_", " ").split()).casefold()


def read_dump(path):
    with bz2.open(path, "rb") as f:
        for _, el in ET.iterparse(f, events=("end",)):
            tag = el.tag.rsplit("}", 1)[-1]
            if tag != "page":
                continue
            ns_uri = el.tag[: -len("page")]
            title = el.findtext(f"{ns_uri}title") or ""
            ns = el.findtext(f"{ns_uri}ns") or ""
            redirect = el.find(f"{ns_uri}redirect") is not None
            text = el.findtext(f"{ns_uri}revision/{ns_uri}text") or ""
            el.clear()
            yield title, ns, redirect, text


def words(s: str) -> int:
    return len(s.split())


def write(path: str, content: str):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(content)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--enwiki", required=True)
    ap.add_argument("--summaries", required=True)
    ap.add_argument("--lee", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)

    # Evaluation: gensim enwiki dump.
    articles, titles = [], []
    n_pages = n_redirect = n_other_ns = n_empty = 0
    for title, ns, redirect, text in read_dump(a.enwiki):
        n_pages += 1
        if ns != "0":
            n_other_ns += 1
            continue
        if redirect or text.lstrip()[:9].upper() == "#REDIRECT":
            n_redirect += 1
            continue
        art = article_to_wikitext_raw(title, text)
        if art.count("\n") <= 3:  # heading only
            n_empty += 1
            continue
        articles.append(art)
        titles.append(title)
    eval_text = "".join(articles)
    write(os.path.join(a.out, "eval.txt"), eval_text)
    write(os.path.join(a.out, "eval_titles.txt"), "".join(t + "\n" for t in titles))
    print(f"eval.txt: {len(titles)} articles from {n_pages} pages ({n_redirect} redirects, "
          f"{n_other_ns} non-article, {n_empty} empty dropped), {words(eval_text)} words, "
          f"{len(eval_text.encode())} bytes")

    # Calibration: ovos summaries, minus eval titles.
    eval_set = {norm_title(t) for t in titles}
    with open(a.summaries, encoding="utf-8") as f:
        summaries = json.load(f)
    items = summaries.items() if isinstance(summaries, dict) else ((None, v) for v in summaries)
    kept, dropped, no_extract = [], [], 0
    for key, entry in items:
        title = entry.get("title") or key or ""
        extract = (entry.get("extract") or "").strip()
        if not extract:
            no_extract += 1
            continue
        if norm_title(title) in eval_set or (key is not None and norm_title(key) in eval_set):
            dropped.append(title)
            continue
        kept.append(extract)
    calib_text = "\n\n".join(kept) + "\n"
    write(os.path.join(a.out, "calib.txt"), calib_text)
    print(f"calib.txt: {len(kept)} extracts, {len(dropped)} dropped as eval titles"
          f"{' (' + '; '.join(dropped) + ')' if dropped else ''}, {no_extract} without extract, "
          f"{words(calib_text)} words, {len(calib_text.encode())} bytes")

    # Second evaluation set: lee_background.cor, one article per line.
    with open(a.lee, encoding="utf-8", errors="replace") as f:
        lee = [" ".join(l.split()) for l in f]
    lee = [l for l in lee if l]
    eval2_text = "\n\n".join(lee) + "\n"
    write(os.path.join(a.out, "eval2.txt"), eval2_text)
    print(f"eval2.txt: {len(lee)} articles, {words(eval2_text)} words, "
          f"{len(eval2_text.encode())} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
