// The report's building blocks: base64, axis ticks, sentences, escaping, the page's marks.
// (The whole report is checked against its files by tests/report/, in a browser too.)
#include "report/chart.hpp"
#include "report/collect.hpp"
#include "report/page.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

using namespace ihn_toolkit::report;

TEST_CASE("report: base64 is RFC 4648's", "[report]") {
  // RFC 4648, section 10.
  CHECK(base64("") == "");
  CHECK(base64("f") == "Zg==");
  CHECK(base64("fo") == "Zm8=");
  CHECK(base64("foo") == "Zm9v");
  CHECK(base64("foob") == "Zm9vYg==");
  CHECK(base64("fooba") == "Zm9vYmE=");
  CHECK(base64("foobar") == "Zm9vYmFy");
  CHECK(base64(std::string("\xff\xfe\x00", 3)) == "//4A");
}

TEST_CASE("report: axis ticks cover the data with 1/2/5 steps", "[report]") {
  const auto t = nice_ticks(0.04, 0.71);
  CHECK(t.front() <= 0.04);
  CHECK(t.back() >= 0.71);
  CHECK(t[1] - t[0] == Approx(0.2));
  const auto e = nice_ticks(1, 18);
  CHECK(e.front() == 0.0);
  CHECK(e.back() == 20.0);
  CHECK(nice_ticks(3, 3).size() >= 2);  // one point still gets an axis
}

TEST_CASE("report: sentences of a tokenised report", "[report]") {
  CHECK(sentences_of("heart is normal . no effusion .") ==
        std::vector<std::string>{"heart is normal .", "no effusion ."});
  CHECK(sentences_of("no full stop") == std::vector<std::string>{"no full stop"});
  CHECK(sentences_of("").empty());
}

TEST_CASE("report: text is escaped, findings are marked against the reference", "[report]") {
  CHECK(escape_xml(R"(<a href="x">&'</a>)") == "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
  Page page;
  page.arms = {"off", "paper"};
  page.studies.push_back({"s<1>",
                          {},
                          "mild cardiomegaly . there is a small right pleural effusion .",
                          {{"mild cardiomegaly . lungs are clear .", {}, 0},
                           {"there is pulmonary edema . small right pleural effusion .", {}, 0}}});
  const std::string html = render_html(page);
  CHECK(html.find("s&lt;1&gt;") != std::string::npos);
  CHECK(html.find("s<1>") == std::string::npos);
  // off: cardiomegaly agrees, the effusion is missed; paper: edema is false, effusion agrees.
  CHECK(
      html.find(
          R"(data-arm="off" data-pos="Cardiomegaly" data-tp="Cardiomegaly" data-fp="" data-fn="Pleural Effusion")") !=
      std::string::npos);
  CHECK(
      html.find(
          R"(data-arm="paper" data-pos="Edema|Pleural Effusion" data-tp="Pleural Effusion" data-fp="Edema" data-fn="Cardiomegaly")") !=
      std::string::npos);
  CHECK(html.find(R"(data-abnormal="1" data-differ="1" data-errors="1")") != std::string::npos);
  CHECK(
      html.find(
          R"~(<span class="lab fp" title="not in the reference (false positive)">✗ Edema</span>)~") !=
      std::string::npos);
}
