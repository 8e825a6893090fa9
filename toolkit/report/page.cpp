// Rendering of the report page. The gallery is static HTML (it reads without JavaScript); the
// script only filters it and moves the keyboard focus. Cards use `content-visibility: auto`, so
// the browser lays out only what is on screen and a page of 600 studies opens at once.
#include "report/page.hpp"

#include "report/chart.hpp"

#include <ihn/eval/chexpert.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <set>
#include <sstream>

namespace ihn_toolkit::report {

namespace {

namespace ev = ihn::eval;

constexpr const char* kStyle = R"CSS(
:root{--tp:#1a7f37;--fp:#b3261e;--fn:#7a5a00;--ref:#0b57d0;--line:#d0d7de}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header.top,main{max-width:1280px;margin:0 auto;padding:0 16px}
h1{font-size:24px;margin:20px 0 4px}h2{font-size:19px;margin:28px 0 8px}
.sub{color:#57606a;margin:0 0 8px}
table.results{border-collapse:collapse;background:#fff;font-size:13px;font-variant-numeric:tabular-nums}
table.results th,table.results td{border:1px solid var(--line);padding:3px 8px;text-align:right}
table.results th:first-child,table.results td:first-child{text-align:left}
table.results tr.better td.sig{color:var(--tp);font-weight:600}
table.results tr.worse td.sig{color:var(--fp);font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.charts figure{margin:0;background:#fff;border:1px solid var(--line);flex:1 1 400px;max-width:640px}
.charts svg{display:block;width:100%;height:auto}
.charts figcaption{font-size:12px;padding:2px 8px;color:#57606a}
.toolbar{position:sticky;top:0;z-index:2;background:#f6f8fa;padding:8px 0;border-bottom:1px solid var(--line);display:flex;flex-wrap:wrap;gap:16px;align-items:center}
.toolbar fieldset{border:0;margin:0;padding:0;display:flex;gap:10px;align-items:center}
.toolbar legend{float:left;font-weight:600;margin-right:6px}
#shown{font-weight:600}
.legend-marks span{margin-right:10px}
.gallery{display:grid;gap:12px;margin:12px 0 40px}
article.study{background:#fff;border:1px solid var(--line);border-radius:6px;padding:10px 12px;display:grid;grid-template-columns:auto 1fr;gap:12px;content-visibility:auto;contain-intrinsic-size:auto 280px}
article.study:focus{outline:3px solid #0969da;outline-offset:2px}
article.study h3{grid-column:1/-1;margin:0;font-size:15px}
article.study h3 .tag{font-weight:normal;font-size:12px;border:1px solid var(--line);border-radius:10px;padding:0 7px;margin-left:6px;color:#57606a}
.views{display:flex;gap:6px;align-items:flex-start}
.views figure{margin:0;text-align:center;font-size:11px;color:#57606a}
.views img{display:block;width:160px;height:auto;image-rendering:auto;background:#000}
.texts{display:grid;gap:6px;min-width:0}
.texts section{border-left:4px solid var(--line);padding-left:8px}
.texts section.reference{border-color:var(--ref)}
.texts h4{margin:0;font-size:13px}.texts h4 small{font-weight:normal;color:#57606a;margin-left:6px}
.texts p{margin:2px 0}
.lab{display:inline-block;font-size:11.5px;border-radius:3px;padding:0 4px;margin:0 2px;border:1px solid;white-space:nowrap}
.lab.tp{color:var(--tp);border-color:var(--tp)}
.lab.fp{color:var(--fp);border-color:var(--fp);border-style:dashed}
.lab.fn{color:var(--fn);border-color:var(--fn);border-style:dotted}
.lab.ref{color:var(--ref);border-color:var(--ref)}
details.nearest{font-size:13px}details.nearest li.own{font-weight:600}
dl.about{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;font-size:13px}
dl.about dt{font-weight:600}dl.about dd{margin:0;font-family:ui-monospace,monospace;white-space:pre-wrap;word-break:break-all}
@media (max-width:700px){article.study{grid-template-columns:1fr}}
)CSS";

constexpr const char* kScript = R"JS(
(function () {
  'use strict';
  var gallery = document.getElementById('gallery');
  var cards = Array.prototype.slice.call(gallery.querySelectorAll('article.study'));
  var shown = document.getElementById('shown');
  var observation = document.getElementById('observation');
  function mode() {
    var checked = document.querySelector('input[name="filter"]:checked');
    return checked ? checked.value : 'all';
  }
  function apply() {
    var m = mode(), obs = observation.value, n = 0;
    cards.forEach(function (c) {
      var show = m === 'all' || c.dataset[m] === '1';
      if (show && obs) show = c.dataset.obs.split('|').indexOf(obs) >= 0;
      c.hidden = !show;
      if (show) n++;
    });
    shown.textContent = n + ' of ' + cards.length + ' studies';
  }
  Array.prototype.forEach.call(document.querySelectorAll('input[name="filter"]'), function (e) {
    e.addEventListener('change', apply);
  });
  observation.addEventListener('change', apply);
  // Keyboard: j / ArrowDown next study, k / ArrowUp previous, Home / End first / last shown.
  gallery.addEventListener('keydown', function (e) {
    var keys = {ArrowDown: 1, j: 1, ArrowUp: -1, k: -1, Home: 'first', End: 'last'};
    if (!(e.key in keys) || e.altKey || e.ctrlKey || e.metaKey) return;
    var visible = cards.filter(function (c) { return !c.hidden; });
    if (!visible.length) return;
    var here = visible.indexOf(document.activeElement && document.activeElement.closest('article.study'));
    var step = keys[e.key], next;
    if (step === 'first') next = 0;
    else if (step === 'last') next = visible.length - 1;
    else next = Math.min(Math.max(here < 0 ? 0 : here + step, 0), visible.length - 1);
    visible[next].focus();
    e.preventDefault();
  });
  apply();
})();
)JS";

using Labels = ev::ReportLabels;

std::set<int> positives(const Labels& labels, bool with_no_finding) {
  std::set<int> out;
  for (int o = with_no_finding ? 0 : 1; o < ev::kNumObservations; ++o)
    if (labels[static_cast<size_t>(o)] == ev::Label::positive) out.insert(o);
  return out;
}

std::string names(const std::set<int>& obs) {
  std::string out;
  for (int o : obs)
    out += (out.empty() ? "" : "|") + std::string(ev::kObservations[static_cast<size_t>(o)]);
  return out;
}

std::string mark(const char* kind, int o) {
  static const char* symbol[] = {"✓", "✗", "○ missed:", ""};
  static const char* title[] = {
      "agrees with the reference (true positive)", "not in the reference (false positive)",
      "in the reference, not in this report (missed)", "the reference's finding"};
  const std::string k = kind;
  const int i = k == "tp" ? 0 : k == "fp" ? 1 : k == "fn" ? 2 : 3;
  return fmt::format(R"(<span class="lab {}" title="{}">{}{}{}</span>)", kind, title[i], symbol[i],
                     *symbol[i] ? " " : "", ev::kObservations[static_cast<size_t>(o)]);
}

/// The report, sentence by sentence, each followed by its findings marked against `reference`
/// (nullptr: the reference itself, marked neutrally).
std::string marked_sentences(const std::string& report, const std::set<int>* reference) {
  std::string out;
  for (const auto& sentence : sentences_of(report)) {
    out += escape_xml(sentence);
    for (int o : positives(ev::label_report(sentence), false))
      out += mark(!reference ? "ref" : reference->count(o) ? "tp" : "fp", o);
    out += ' ';
  }
  return out;
}

std::string study_card(const Page& page, const StudyCard& s) {
  const std::set<int> ref = positives(ev::label_report(s.reference), true);
  const bool abnormal = !ref.count(0);
  bool differ = false, errors = false;
  std::set<int> mentioned = ref;
  std::string arms_html;
  for (size_t a = 0; a < s.arms.size() && a < page.arms.size(); ++a) {
    const auto& arm = s.arms[a];
    differ = differ || arm.report != s.arms[0].report;
    const std::set<int> pos = positives(ev::label_report(arm.report), true);
    std::set<int> tp, fp, fn;
    for (int o : pos) (ref.count(o) ? tp : fp).insert(o);
    for (int o : ref)
      if (!pos.count(o)) fn.insert(o);
    errors = errors || !fp.empty() || !fn.empty();
    mentioned.insert(pos.begin(), pos.end());
    std::string findings;
    for (int o : pos) findings += mark(ref.count(o) ? "tp" : "fp", o);
    for (int o : fn) findings += mark("fn", o);
    std::string nearest;
    if (!arm.neighbours.empty()) {
      nearest = fmt::format(
          R"(<details class="nearest"><summary>closest reports to the image in the model's feature space{}</summary><ol>)",
          arm.own_rank > 0
              ? fmt::format(" — its own report ranks {} of {}", arm.own_rank, page.studies.size())
              : "");
      for (const auto& n : arm.neighbours)
        nearest +=
            fmt::format(R"(<li{}>{}{} <small>({}, cosine {:.3f})</small></li>)",
                        n.id == s.id ? R"( class="own")" : "", n.id == s.id ? "✓ own report: " : "",
                        escape_xml(n.report), escape_xml(n.id), n.similarity);
      nearest += "</ol></details>";
    }
    arms_html += fmt::format(
        R"(<section class="arm" data-arm="{0}" data-pos="{1}" data-tp="{2}" data-fp="{3}" data-fn="{4}"><h4>{0}<small>{5} agree · {6} false · {7} missed</small></h4><p class="report">{8}</p><p class="findings">{9}</p>{10}</section>)",
        escape_xml(page.arms[a]), names(pos), names(tp), names(fp), names(fn), tp.size(), fp.size(),
        fn.size(), marked_sentences(arm.report, &ref), findings, nearest);
  }
  std::string views;
  for (const auto& [name, uri] : s.views)
    views += fmt::format(
        R"(<figure><img src="{}" alt="{} view of {}" loading="lazy" decoding="async"><figcaption>{}</figcaption></figure>)",
        uri, escape_xml(name), escape_xml(s.id), escape_xml(name));
  std::string tags = abnormal ? R"(<span class="tag">abnormal</span>)" : "";
  if (page.arms.size() > 1 && differ) tags += R"(<span class="tag">arms differ</span>)";
  std::string ref_findings;
  for (int o : ref) ref_findings += mark("ref", o);
  return fmt::format(
      R"(<article class="study" id="study-{0}" tabindex="0" data-id="{0}" data-abnormal="{1}" data-differ="{2}" data-errors="{3}" data-obs="{4}" data-ref="{5}"><h3>{0}{6}</h3><div class="views">{7}</div><div class="texts"><section class="reference"><h4>reference</h4><p class="report">{8}</p><p class="findings">{9}</p></section>{10}</div></article>)",
      escape_xml(s.id), abnormal ? 1 : 0, differ ? 1 : 0, errors ? 1 : 0, names(mentioned),
      names(ref), tags, views, marked_sentences(s.reference, nullptr), ref_findings, arms_html);
}

}  // namespace

std::vector<std::string> sentences_of(const std::string& report) {
  std::vector<std::string> out;
  std::istringstream words(report);
  std::string sentence;
  for (std::string w; words >> w;) {
    sentence += (sentence.empty() ? "" : " ") + w;
    if (w == ".") out.push_back(std::move(sentence)), sentence.clear();
  }
  if (!sentence.empty()) out.push_back(sentence);
  return out;
}

std::string render_html(const Page& page) {
  std::string out = fmt::format(
      R"(<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>{}</title><style>{}</style></head><body><header class="top"><h1>{}</h1><p class="sub">{}</p></header><main>)",
      escape_xml(page.title), kStyle, escape_xml(page.title), escape_xml(page.subtitle));
  out += "<h2 id=\"results\">Results</h2>" + page.results_html;
  if (!page.charts.empty()) {
    out += R"(<h2 id="charts">Charts</h2><div class="charts">)";
    for (const auto& [file, svg] : page.charts)
      out += fmt::format("<figure>{}<figcaption>also in {}</figcaption></figure>", svg,
                         escape_xml(file));
    out += "</div>";
  }
  out += fmt::format(R"(<h2 id="studies">Studies</h2><p class="sub">{}</p>)",
                     escape_xml(page.gallery_note));
  out += R"(<div class="toolbar" role="search"><fieldset><legend>Show</legend>)";
  std::vector<std::pair<const char*, const char*>> filters = {
      {"all", "all"}, {"abnormal", "abnormal only"}, {"errors", "with errors"}};
  if (page.arms.size() > 1) filters.insert(filters.begin() + 2, {"differ", "arms differ"});
  for (const auto& [value, label] : filters)
    out += fmt::format(R"(<label><input type="radio" name="filter" value="{}"{}> {}</label>)",
                       value, std::string(value) == "all" ? " checked" : "", label);
  out += R"(</fieldset><label>observation <select id="observation"><option value="">any</option>)";
  for (const char* o : ev::kObservations)
    out += fmt::format(R"(<option value="{0}">{0}</option>)", o);
  out += fmt::format(
      R"(</select></label><span id="shown" aria-live="polite">{} studies</span><span class="legend-marks">{}{}{}{}</span><span class="sub">j / k or ↓ / ↑ move between studies</span></div>)",
      page.studies.size(), R"(<span class="lab tp">✓ agrees with the reference</span>)",
      R"(<span class="lab fp">✗ not in the reference</span>)",
      R"(<span class="lab fn">○ missed</span>)",
      R"(<span class="lab ref">the reference's finding</span>)");
  out += R"(<div class="gallery" id="gallery">)";
  for (const auto& s : page.studies) out += study_card(page, s);
  out += R"(</div><h2 id="about">How this was made</h2><dl class="about">)";
  for (const auto& [k, v] : page.about)
    out += fmt::format("<dt>{}</dt><dd>{}</dd>", escape_xml(k), escape_xml(v));
  out += fmt::format("</dl></main><script>{}</script></body></html>\n", kScript);
  return out;
}

}  // namespace ihn_toolkit::report
