#!/usr/bin/env python3
"""Checks report.html of an `ihn compare`, `ihn train` or `ihn evaluate` folder against the
files it was built from: every study, every arm's report, the labeller's findings, the table.

usage: check_report.py DIR compare|run|evaluate
Exit status 0 when every check holds; otherwise each failure is printed."""
import json
import os
import sys
from html.parser import HTMLParser

VOID = {"img", "input", "meta", "br", "hr", "link", "source"}


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent = tag, dict(attrs), parent
        self.children, self.text = [], []

    def cls(self):
        return self.attrs.get("class", "").split()

    def find_all(self, pred):
        out = []
        for c in self.children:
            if pred(c):
                out.append(c)
            out.extend(c.find_all(pred))
        return out

    def text_content(self, skip=lambda n: False):
        parts = []
        for item in self.text:
            if isinstance(item, Node):
                if not skip(item):
                    parts.append(item.text_content(skip))
            else:
                parts.append(item)
        return "".join(parts)


class Tree(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", [], None)
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, attrs, self.cur)
        self.cur.children.append(node)
        self.cur.text.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_endtag(self, tag):
        n = self.cur
        while n is not self.root and n.tag != tag:
            n = n.parent
        if n is not self.root:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.text.append(data)


failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
    return cond


def split(v):
    return set(x for x in v.split("|") if x)


def main():
    folder, kind = sys.argv[1], sys.argv[2]
    page = os.path.join(folder, "report.html")
    tree = Tree()
    with open(page, encoding="utf-8") as f:
        tree.feed(f.read())
    root = tree.root
    if kind == "compare":
        compare = json.load(open(os.path.join(folder, "compare.json")))
        arms = compare["arms"]
        names = {"off": "without", "paper": "with_ihn"}
        seed_dir = os.path.join(folder, "seed_%d" % compare["first_seed"])
        evals = [json.load(open(os.path.join(seed_dir, names.get(a, a), "test.json"))) for a in arms]
        table_text = root.find_all(lambda n: n.tag == "table")[0].text_content()
        for row in compare["rows"]:
            check(row["metric"] in table_text, "results table lacks the row " + row["metric"])
    else:
        name = "test.json" if kind == "run" else "evaluation.json"
        evals = [json.load(open(os.path.join(folder, name)))]
        arms = None
        table_text = root.find_all(lambda n: n.tag == "table")[0].text_content()
        for metric in ("BLEU-4", "CIDEr", "clinical F1 macro", "retrieval R@1"):
            check(metric in table_text, "results table lacks " + metric)
        check("%.4f" % evals[0]["BLEU_4"] in table_text, "results table lacks BLEU-4's value")
    data = evals[0]["per_example_data"]
    ids, refs = data["ids"], data["references"]
    cards = root.find_all(lambda n: n.tag == "article" and "study" in n.cls())
    check(len(cards) == len(ids), "%d study cards for %d studies" % (len(cards), len(ids)))
    by_id = {c.attrs["data-id"]: c for c in cards}
    check(set(by_id) == set(ids), "the cards' ids differ from the evaluation's")
    totals = [[0, 0, 0] for _ in evals]
    is_label = lambda n: "lab" in n.cls()
    for i, sid in enumerate(ids):
        card = by_id.get(sid)
        if card is None:
            continue
        ref_section = card.find_all(lambda n: n.tag == "section" and "reference" in n.cls())[0]
        ref_text = ref_section.find_all(lambda n: n.tag == "p" and "report" in n.cls())[0]
        check(" ".join(ref_text.text_content(is_label).split()) == " ".join(refs[i].split()),
              sid + ": reference text differs")
        ref = split(card.attrs["data-ref"])
        check(card.attrs["data-abnormal"] == ("0" if "No Finding" in ref else "1"),
              sid + ": data-abnormal disagrees with the reference's labels")
        imgs = card.find_all(lambda n: n.tag == "img")
        check(len(imgs) == 2 and all(m.attrs["src"].startswith("data:image/jpeg;base64,") for m in imgs),
              sid + ": expected two embedded views")
        sections = card.find_all(lambda n: n.tag == "section" and "arm" in n.cls())
        check(len(sections) == len(evals), sid + ": %d arm sections" % len(sections))
        if arms:
            check([s.attrs["data-arm"] for s in sections] == arms, sid + ": arms differ from compare.json")
        mentioned = set(ref)
        hyps = [e["per_example_data"]["hypotheses"][i] for e in evals]
        for a, s in enumerate(sections[: len(evals)]):
            text = s.find_all(lambda n: n.tag == "p" and "report" in n.cls())[0]
            check(" ".join(text.text_content(is_label).split()) == " ".join(hyps[a].split()),
                  "%s arm %d: report text differs from the evaluation's" % (sid, a))
            pos, tp, fp, fn = (split(s.attrs[k]) for k in ("data-pos", "data-tp", "data-fp", "data-fn"))
            mentioned |= pos
            check(tp == pos & ref and fp == pos - ref and fn == ref - pos,
                  "%s arm %d: tp/fp/missed inconsistent with the labels" % (sid, a))
            for lab in s.find_all(lambda n: n.tag == "span" and "lab" in n.cls()):
                obs = lab.text_content().replace("✓", "").replace("✗", "").replace("○ missed:", "").strip()
                kind_ = [c for c in lab.cls() if c in ("tp", "fp", "fn")]
                expected = {"tp": obs in ref, "fp": obs not in ref, "fn": obs in fn}
                check(kind_ and expected[kind_[0]],
                      "%s arm %d: the mark %s on %s contradicts the reference" % (sid, a, kind_, obs))
            totals[a][0] += len(tp)
            totals[a][1] += len(fp)
            totals[a][2] += len(fn)
        check(split(card.attrs["data-obs"]) == mentioned, sid + ": data-obs is not the union of the findings")
        check(card.attrs["data-differ"] == ("1" if len(set(hyps)) > 1 else "0"), sid + ": data-differ wrong")
    # The page's findings are the labeller's: their counts are those of the evaluation's F1.
    for a, e in enumerate(evals):
        micro = e["clinical"]["micro"]
        check(totals[a] == [micro["tp"], micro["fp"], micro["fn"]],
              "arm %d: tp/fp/missed on the page %s, clinical F1 counted %s" %
              (a, totals[a], [micro["tp"], micro["fp"], micro["fn"]]))
    svgs = root.find_all(lambda n: n.tag == "svg")
    check(len(svgs) == 3, "%d charts, expected 3 (loss, validation, F1)" % len(svgs))
    for f in ("curves_loss.svg", "curves_validation.svg", "f1_per_observation.svg"):
        check(os.path.getsize(os.path.join(folder, f)) > 500, f + " missing or empty")
    about = " ".join(n.text_content() for n in root.find_all(lambda n: n.tag == "dl"))
    check("command" in about and "libtorch" in about, "provenance missing")
    scripts = root.find_all(lambda n: n.tag in ("script", "link", "img", "iframe"))
    for n in scripts:
        src = n.attrs.get("src", n.attrs.get("href", ""))
        check(not src or src.startswith("data:"), "the page loads an external resource: " + src)
    for f in failures[:40]:
        print("FAIL:", f)
    print("%s: %d studies, %d arm(s), %d failure(s)" % (page, len(cards), len(evals), len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
