// Reading result folders into a Page. Everything comes from files the commands already write
// (compare.json, test.json / evaluation.json with their per-study data, log.jsonl, config.json);
// the images are rebuilt from the run's data, so `ihn report` works on any finished folder.
#include "report/collect.hpp"

#include "report/chart.hpp"
#include "report/page.hpp"
#include "train/train.hpp"

#include <ihn/eval/chexpert.hpp>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

namespace ihn_toolkit::report {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ihn_toolkit::train::TrainConfig;

json read_json_file(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw ReportError(path.string() + ": missing or unreadable");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw ReportError(path.string() + ": not valid JSON (" + e.what() + ")");
  }
}

void write_atomically(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw ReportError("cannot write " + tmp.string() + ": " + std::strerror(errno));
    out << text;
    out.close();
    if (out.fail()) {
      std::error_code ignored;
      fs::remove(tmp, ignored);
      throw ReportError("writing " + path.string() + " failed (disk full?)");
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec)
    throw ReportError("cannot move " + tmp.string() + " to " + path.string() + ": " + ec.message());
}

std::string fixed(double v, int digits = 4) {
  return std::isfinite(v) ? fmt::format("{:.{}f}", v, digits) : "n/a";
}

double number(const json& j, const char* key) {
  return j.contains(key) && j.at(key).is_number() ? j.at(key).get<double>() : std::nan("");
}

// ----------------------------------------------------------------------------- curves

struct RunCurves {
  std::vector<std::pair<double, double>> loss, validation;
};

/// Epoch rows of DIR/log.jsonl: training loss and the validation score that selected best.pt.
RunCurves read_curves(const fs::path& run_dir, const std::string& metric) {
  RunCurves c;
  std::ifstream in(run_dir / "log.jsonl");
  for (std::string line; std::getline(in, line);) {
    json row = json::parse(line, nullptr, false);  // a line cut by a kill is skipped
    if (row.is_discarded() || row.value("type", "") != "epoch") continue;
    const double epoch = number(row, "epoch");
    c.loss.emplace_back(epoch, number(row, "train_loss"));
    c.validation.emplace_back(epoch, number(row, ("val_" + metric).c_str()));
  }
  return c;
}

std::string metric_title(const std::string& metric) {
  if (metric == "clinical_f1_macro") return "clinical F1 (macro)";
  if (metric == "BLEU_4") return "BLEU-4";
  return metric;
}

/// Two line charts: training loss and validation score per epoch, one line per run, styled by arm.
void add_curve_charts(Page& page, const std::vector<std::pair<int, fs::path>>& runs,
                      const std::string& metric) {
  LineChart loss{"Training loss", "epoch", "loss (mean over the epoch)", {}};
  LineChart val{"Validation " + metric_title(metric) + " (selects best.pt)",
                "epoch",
                metric_title(metric),
                {}};
  for (const auto& [arm, dir] : runs) {
    const auto c = read_curves(dir, metric);
    if (c.loss.empty()) continue;
    loss.series.push_back({page.arms[static_cast<size_t>(arm)], arm, c.loss});
    val.series.push_back({page.arms[static_cast<size_t>(arm)], arm, c.validation});
  }
  if (loss.series.empty()) return;
  page.charts.emplace_back("curves_loss.svg", render_svg(loss));
  page.charts.emplace_back("curves_validation.svg", render_svg(val));
}

void add_f1_chart(Page& page, const std::vector<std::vector<double>>& values,
                  const std::string& what) {
  BarChart bars;
  bars.title = "F1 per observation (test)";
  bars.value_label = what;
  bars.series_names = page.arms;
  for (const char* o : ihn::eval::kObservations) bars.groups.emplace_back(o);
  bars.values = values;
  page.charts.emplace_back("f1_per_observation.svg", render_svg(bars));
}

// ----------------------------------------------------------------------------- gallery

/// Cards for the studies of `evals` (one evaluation per arm, same studies in the same order).
void add_studies(Page& page, const std::vector<json>& evals, const TrainConfig* config,
                 ReportFiles& files) {
  const auto& first = evals.at(0).at("per_example_data");
  const auto ids = first.at("ids").get<std::vector<std::string>>();
  const auto refs = first.at("references").get<std::vector<std::string>>();
  std::vector<std::vector<std::string>> hyps;
  for (const auto& e : evals) {
    hyps.push_back(e.at("per_example_data").at("hypotheses").get<std::vector<std::string>>());
    if (hyps.back().size() != ids.size())
      throw ReportError("the arms' evaluations hold different studies (" +
                        std::to_string(hyps.back().size()) + " and " + std::to_string(ids.size()) +
                        ")");
  }
  train::StudyImages images;
  if (config) {
    try {
      images = train::study_images(*config, ids);
    } catch (const std::exception& e) {
      files.notes.push_back(std::string("images not shown: ") + e.what());
    }
    for (const auto& p : images.problems) files.notes.push_back("image not shown: " + p);
  } else {
    files.notes.push_back("images not shown: no run config found");
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    StudyCard card{ids[i], {}, refs[i], {}};
    if (auto it = images.jpeg.find(ids[i]); it != images.jpeg.end())
      for (size_t v = 0; v < it->second.size(); ++v)
        card.views.emplace_back(v < images.view_names.size() ? images.view_names[v] : "view",
                                "data:image/jpeg;base64," + base64(it->second[v]));
    for (size_t a = 0; a < evals.size(); ++a) {
      ArmOutput arm{hyps[a][i], {}};
      const auto& data = evals[a].at("per_example_data");
      if (data.contains("i2r_ranks") && i < data.at("i2r_ranks").size())
        arm.own_rank = data.at("i2r_ranks").at(i).get<long>();
      if (data.contains("i2r_nearest")) {
        const auto& index = data.at("i2r_nearest").at(i);
        const auto& sim = data.at("i2r_nearest_similarity").at(i);
        for (size_t k = 0; k < index.size(); ++k) {
          const auto j = index.at(k).get<size_t>();
          if (j < ids.size()) arm.neighbours.push_back({ids[j], refs[j], sim.at(k).get<double>()});
        }
      }
      card.arms.push_back(std::move(arm));
    }
    page.studies.push_back(std::move(card));
  }
}

std::optional<TrainConfig> config_of(const json& evaluation, const fs::path& run_dir) {
  try {
    if (evaluation.contains("config")) return train::config_from_json(evaluation.at("config"));
    if (fs::exists(run_dir / "config.json"))
      return train::config_from_json(read_json_file(run_dir / "config.json"));
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

void add_provenance(Page& page, const json& j) {
  if (!j.contains("provenance")) {
    page.about.emplace_back("provenance", "not recorded (written by an older ihn)");
    return;
  }
  const auto& p = j.at("provenance");
  for (const char* key : {"command", "ihn", "libtorch", "compiler", "created"})
    if (p.contains(key)) page.about.emplace_back(key, p.at(key).get<std::string>());
}

// ----------------------------------------------------------------------------- results tables

std::string compare_table(const json& compare, const std::vector<std::string>& arms) {
  std::string h = R"(<table class="results"><thead><tr><th scope="col">metric</th>)";
  for (const auto& a : arms) h += fmt::format(R"(<th scope="col">{}</th>)", escape_xml(a));
  for (size_t a = 1; a < arms.size(); ++a)
    h += fmt::format(
        R"(<th scope="col">{0} − off [95% CI]</th><th scope="col">p</th><th scope="col">significant</th><th scope="col">seeds +/=/−</th>)",
        escape_xml(arms[a]));
  h += "</tr></thead><tbody>";
  for (const auto& row : compare.at("rows")) {
    h += fmt::format("<tr><td>{}</td>", escape_xml(row.at("metric").get<std::string>()));
    for (const auto& a : arms) {
      const auto& cell = row.at(a);
      h += fmt::format("<td>{} ± {}</td>", fixed(number(cell, "mean")),
                       fixed(number(cell, "ci95_half_width")));
    }
    for (size_t a = 1; a < arms.size(); ++a) {
      const auto& cell = row.at(arms[a]);
      const bool tested = cell.value("bootstrapped", true);
      const double d = number(cell, "difference");
      std::string ci = "set-level: none";
      if (tested && cell.contains("difference_ci95") && cell.at("difference_ci95").size() == 2 &&
          cell.at("difference_ci95")[0].is_number())
        ci = fmt::format("[{:+.4f}, {:+.4f}]", cell.at("difference_ci95")[0].get<double>(),
                         cell.at("difference_ci95")[1].get<double>());
      const bool sig = tested && cell.value("significant", false);
      // Marked with a symbol and a word as well as a colour.
      const std::string verdict = !tested ? "n/a" : !sig ? "no" : d > 0 ? "▲ higher" : "▼ lower";
      const auto seeds = cell.value("seeds_better_equal_worse", std::vector<int>{0, 0, 0});
      h +=
          fmt::format(R"(<td>{:+.4f} {}</td><td>{}</td><td class="sig{}">{}</td><td>{}/{}/{}</td>)",
                      d, ci, tested ? fixed(number(cell, "p_value"), 3) : "n/a",
                      sig ? (d > 0 ? " higher" : " lower") : "", verdict, seeds.at(0), seeds.at(1),
                      seeds.at(2));
    }
    h += "</tr>";
  }
  return h + "</tbody></table>";
}

std::string run_table(const json& e) {
  const json ci = e.value("confidence_intervals", json::object());
  std::string h =
      R"(<table class="results"><thead><tr><th scope="col">metric</th><th scope="col">value</th><th scope="col">95% bootstrap CI</th></tr></thead><tbody>)";
  auto row = [&](const std::string& name, double v, const std::string& key) {
    std::string interval = "—";
    if (!key.empty() && ci.contains(key))
      interval = fmt::format("[{}, {}]", fixed(number(ci.at(key), "lower")),
                             fixed(number(ci.at(key), "upper")));
    h += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td></tr>", escape_xml(name), fixed(v),
                     interval);
  };
  for (int k = 1; k <= 4; ++k)
    row(fmt::format("BLEU-{}", k), number(e, fmt::format("BLEU_{}", k).c_str()),
        fmt::format("BLEU_{}", k));
  for (const char* key : {"METEOR_esw", "METEOR_es", "METEOR_e"})
    if (e.contains(key)) row(key, number(e, key), key);
  row("ROUGE-L", number(e, "ROUGE_L"), "ROUGE_L");
  row("CIDEr", number(e, "CIDEr"), "CIDEr");
  if (e.contains("clinical")) {
    row("clinical F1 micro", number(e.at("clinical").at("micro"), "f1"), "clinical_micro_F1");
    row("clinical F1 macro", number(e.at("clinical").at("macro"), "f1"), "clinical_macro_F1");
  }
  if (e.contains("retrieval")) {
    const auto& r = e.at("retrieval");
    row("retrieval R@1 (image → report)", number(r.at("image_to_report"), "R@1"), "");
    row("retrieval R@5 (image → report)", number(r.at("image_to_report"), "R@5"), "");
    row("retrieval R@1 (report → image)", number(r.at("report_to_image"), "R@1"), "");
  }
  if (e.contains("distinct"))
    row("distinct reports", number(e.at("distinct"), "distinct_reports"), "");
  return h + "</tbody></table>";
}

// ----------------------------------------------------------------------------- the three kinds

Page compare_page(const fs::path& dir, ReportFiles& files) {
  const json compare = read_json_file(dir / "compare.json");
  Page page;
  page.arms = compare.at("arms").get<std::vector<std::string>>();
  const int seeds = compare.value("seeds", 1);
  const auto first_seed = compare.value("first_seed", uint64_t{1});
  page.title = "ihn compare — " + dir.filename().string();
  page.subtitle = fmt::format(
      "{} seed(s) × arms {{{}}}, preset {}. Mean ± 95% t interval over seeds; difference = arm − "
      "off with a paired bootstrap over seeds × test studies; significant = p < 0.05.",
      seeds, fmt::format("{}", fmt::join(page.arms, ", ")), compare.value("preset", "?"));
  page.results_html = compare_table(compare, page.arms);
  std::vector<std::pair<int, fs::path>> runs;
  std::string metric = "BLEU_4";
  for (int s = 0; s < seeds; ++s)
    for (size_t a = 0; a < page.arms.size(); ++a) {
      const fs::path run = dir / ("seed_" + std::to_string(first_seed + static_cast<uint64_t>(s))) /
                           train::compare_arm_folder(page.arms[a]);
      if (fs::exists(run / "log.jsonl")) runs.emplace_back(static_cast<int>(a), run);
      if (s == 0 && a == 0 && fs::exists(run / "config.json"))
        metric = read_json_file(run / "config.json").value("select_metric", metric);
    }
  add_curve_charts(page, runs, metric);
  std::vector<std::vector<double>> f1;
  for (const char* o : ihn::eval::kObservations) {
    std::vector<double> per_arm(page.arms.size(), std::nan(""));
    for (const auto& row : compare.at("rows"))
      if (row.at("metric").get<std::string>() == std::string("F1 ") + o)
        for (size_t a = 0; a < page.arms.size(); ++a)
          per_arm[a] = number(row.at(page.arms[a]), "mean");
    f1.push_back(per_arm);
  }
  add_f1_chart(page, f1, "F1, mean over seeds");
  std::vector<json> evals;
  const fs::path seed_dir = dir / ("seed_" + std::to_string(first_seed));
  for (const auto& arm : page.arms)
    evals.push_back(read_json_file(seed_dir / train::compare_arm_folder(arm) / "test.json"));
  const auto config = config_of(evals[0], seed_dir / train::compare_arm_folder(page.arms[0]));
  add_studies(page, evals, config ? &*config : nullptr, files);
  page.gallery_note = fmt::format(
      "Every test study of seed {}: both views, the reference, and each arm's report. Findings "
      "are the rule-based labeller's positive observations, per sentence and for the whole report "
      "(where the counts of clinical F1 come from).",
      first_seed);
  add_provenance(page, compare);
  page.about.emplace_back("runs",
                          (dir / "seed_S" / "ARM").string() + " (full ihn train run folders)");
  return page;
}

/// One evaluation: an `ihn train` run folder (test.json) or an `ihn evaluate` folder.
Page run_page(const fs::path& dir, const fs::path& evaluation_file, ReportFiles& files) {
  const json e = read_json_file(evaluation_file);
  if (!e.contains("per_example_data"))
    throw ReportError(evaluation_file.string() +
                      ": holds no per-study data (written by an older ihn)");
  // The run folder: this one, or the checkpoint's for an evaluation folder.
  fs::path run_dir = dir;
  if (!fs::exists(dir / "log.jsonl") && e.contains("checkpoint"))
    run_dir = fs::path(e.at("checkpoint").get<std::string>()).parent_path();
  const auto config = config_of(e, run_dir);
  Page page;
  page.arms = {config ? config->model.architecture + ", ihn " + config->ihn.mode : "model"};
  page.title = "ihn evaluation — " + fs::absolute(dir).lexically_normal().filename().string();
  page.subtitle =
      fmt::format("{} on the {} split: {} studies, beam {}.", e.value("checkpoint", "?"),
                  e.value("split", "test"), e.value("n_examples", 0), e.value("beam_size", 0));
  page.results_html = run_table(e);
  add_curve_charts(page, {{0, run_dir}}, config ? config->optim.select_metric : "BLEU_4");
  std::vector<std::vector<double>> f1;
  for (const char* o : ihn::eval::kObservations) {
    double v = std::nan("");
    if (e.contains("clinical") && e.at("clinical").at("per_observation").contains(o))
      v = number(e.at("clinical").at("per_observation").at(o), "f1");
    f1.push_back({v});
  }
  add_f1_chart(page, f1, "F1");
  add_studies(page, {e}, config ? &*config : nullptr, files);
  page.gallery_note =
      "Every study of the split: the views, the reference and the generated report with the "
      "labeller's findings, and the reports closest to each image in the model's feature space "
      "(what ihn trains to be discriminative).";
  add_provenance(page, e);
  if (config) page.about.emplace_back("config", train::to_json(*config).dump());
  return page;
}

}  // namespace

std::string base64(const std::string& bytes) {
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const unsigned v = (static_cast<unsigned char>(bytes[i]) << 16) |
                       (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                       static_cast<unsigned char>(bytes[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += alphabet[(v >> s) & 63];
  }
  if (i < bytes.size()) {
    unsigned v = static_cast<unsigned char>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= static_cast<unsigned char>(bytes[i + 1]) << 8;
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? alphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

ReportFiles write_report(const std::string& dir_name) {
  const fs::path dir(dir_name);
  ReportFiles files;
  Page page;
  if (fs::exists(dir / "compare.json"))
    page = compare_page(dir, files);
  else if (fs::exists(dir / "evaluation.json"))
    page = run_page(dir, dir / "evaluation.json", files);
  else if (fs::exists(dir / "test.json"))
    page = run_page(dir, dir / "test.json", files);
  else
    throw ReportError(dir_name +
                      ": holds no compare.json, evaluation.json or test.json (give a "
                      "folder written by ihn compare, ihn evaluate or a finished ihn train)");
  for (const auto& note : files.notes) page.about.emplace_back("note", note);
  for (const auto& [file, svg] : page.charts) {
    write_atomically(dir / file, svg + "\n");
    files.charts.push_back((dir / file).string());
  }
  files.html = (dir / "report.html").string();
  write_atomically(files.html, render_html(page));
  return files;
}

}  // namespace ihn_toolkit::report
