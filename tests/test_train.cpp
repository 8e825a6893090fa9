// The trainer and its front ends end to end on a tiny synthetic set (seconds): training,
// bit-exact resume (whole epochs and mid-epoch), evaluation, generation from PNG files, the
// comparison statistics, and the errors users see for bad inputs.
#include "test_common.hpp"

#include <data/annotation.hpp>
#include <data/image.hpp>
#include <data/synthetic.hpp>
#include <train/train.hpp>

#include <nlohmann/json.hpp>

#include <fstream>
#include <string>

namespace {

using ihn_examples::train::TrainConfig;
using ihn_examples::train::TrainError;

/// A model and data set small enough that two epochs take about a second.
TrainConfig tiny(const std::string& out) {
  TrainConfig c;
  c.synth_studies = 40;
  c.synth_image_size = 32;
  c.resize = 36;
  c.crop = 32;
  c.d_model = c.d_ff = c.rm_d_model = 32;
  c.num_heads = c.rm_num_heads = 2;
  c.max_seq_length = 20;
  c.batch_size = 8;
  c.epochs = 2;
  c.beam_size = 1;
  c.bootstrap = 0;
  c.threads = 1;
  c.quiet = true;
  c.plots = false;
  c.ihn = "paper";
  c.negatives = 2;
  c.ascent_steps = 2;
  c.out = out;
  return c;
}

ihn::StateDict model_entries(const std::filesystem::path& file) {
  ihn::StateDict out;
  for (auto& [k, v] : ihn::load_state(file))
    if (k.rfind("model.", 0) == 0 || k.rfind("ihn.", 0) == 0 || k.rfind("official.", 0) == 0)
      out.emplace(k, v);
  return out;
}

void require_identical(const std::filesystem::path& a, const std::filesystem::path& b) {
  const auto x = model_entries(a), y = model_entries(b);
  REQUIRE(x.size() == y.size());
  REQUIRE(x.size() > 10);
  for (const auto& [k, v] : x) {
    INFO(k);
    REQUIRE(y.count(k));
    REQUIRE(v.sizes() == y.at(k).sizes());
    REQUIRE(torch::equal(v, y.at(k)));
  }
}

}  // namespace

TEST_CASE("train: two epochs, then resume bit-exactly from whole and partial epochs", "[train]") {
  const auto root = ihn_test::scratch_dir("train_resume");
  auto full = tiny((root / "full").string());
  const auto r_full = ihn_examples::train::train(full);
  REQUIRE_FALSE(r_full.interrupted);
  REQUIRE(r_full.epochs_done == 2);
  REQUIRE(r_full.epoch_losses.size() == 2);
  REQUIRE(std::isfinite(r_full.epoch_losses[0]));
  REQUIRE(std::filesystem::exists(root / "full" / "best.pt"));
  REQUIRE(std::filesystem::exists(root / "full" / "reports" / "epoch_2_val.jsonl"));
  REQUIRE(r_full.test.contains("BLEU_4"));

  // N/2 epochs, then --resume with the full budget.
  auto half = tiny((root / "half").string());
  half.epochs = 1;
  REQUIRE(ihn_examples::train::train(half).epochs_done == 1);
  half.epochs = 2;
  half.resume = true;
  const auto r_half = ihn_examples::train::train(half);
  REQUIRE(r_half.epoch_losses == r_full.epoch_losses);
  require_identical(root / "full" / "last.pt", root / "half" / "last.pt");

  // Stopped mid-epoch (as on Ctrl-C): 28 training studies / 8 = 4 steps per epoch.
  auto part = tiny((root / "part").string());
  part.stop_after = 3;
  REQUIRE(ihn_examples::train::train(part).interrupted);
  part.resume = true;
  REQUIRE(ihn_examples::train::train(part).interrupted);  // steps 4..6 cross into epoch 2
  part.stop_after = 0;
  const auto r_part = ihn_examples::train::train(part);
  REQUIRE_FALSE(r_part.interrupted);
  REQUIRE(r_part.epoch_losses == r_full.epoch_losses);
  require_identical(root / "full" / "last.pt", root / "part" / "last.pt");

  // A different seed really trains differently (the comparison above can fail).
  auto other = tiny((root / "other").string());
  other.seed = 1;
  other.epochs = 1;
  REQUIRE(ihn_examples::train::train(other).epoch_losses[0] != r_full.epoch_losses[0]);
}

TEST_CASE("train: --ihn official trains its heads and resumes bit-exactly", "[train]") {
  const auto root = ihn_test::scratch_dir("train_official");
  auto full = tiny((root / "full").string());
  full.ihn = "official";
  full.schedule = "exp:0.01";
  const auto r_full = ihn_examples::train::train(full);
  REQUIRE(r_full.epochs_done == 2);
  auto half = full;
  half.out = (root / "half").string();
  half.epochs = 1;
  ihn_examples::train::train(half);
  half.epochs = 2;
  half.resume = true;
  REQUIRE(ihn_examples::train::train(half).epoch_losses == r_full.epoch_losses);
  require_identical(root / "full" / "last.pt", root / "half" / "last.pt");
  // The heads and temperatures are in the checkpoint and were trained.
  const auto state = ihn::load_state(root / "full" / "last.pt");
  REQUIRE(state.count("official.temp_1"));
  REQUIRE(state.at("official.temp_1").item<double>() != Approx(std::log(1 / 0.07)).epsilon(1e-9));
  REQUIRE(state.count("official.image_proj.linear1.weight"));
}

TEST_CASE("train: evaluate and generate from PNG files agree", "[train]") {
  const auto root = ihn_test::scratch_dir("train_eval");
  auto c = tiny((root / "run").string());
  c.epochs = 1;
  ihn_examples::train::train(c);
  ihn_examples::train::EvaluateOptions eo;
  eo.checkpoint = (root / "run" / "best.pt").string();
  eo.bootstrap = 20;
  eo.reports_out = (root / "reports.jsonl").string();
  const auto j = ihn_examples::train::evaluate_checkpoint(eo);
  REQUIRE(j.at("n_examples").get<int>() == 8);
  for (const char* key : {"BLEU_1", "BLEU_4", "ROUGE_L", "CIDEr"}) {
    INFO(key);
    REQUIRE(j.at(key).get<double>() >= 0);
    REQUIRE(j.at(key).get<double>() <= 10);
  }
  const double r1 = j.at("retrieval").at("image_to_report").at("R@1").get<double>();
  REQUIRE(r1 >= 0);
  REQUIRE(r1 <= 1);
  REQUIRE(j.at("confidence_intervals").contains("BLEU_4"));
  REQUIRE(j.at("clinical").contains("micro"));
  REQUIRE(std::filesystem::file_size(eo.reports_out) > 0);

  // The first test study's images as PNGs: generate must give evaluate's report for it.
  ihn::data::SyntheticOptions so;
  so.studies = c.synth_studies;
  so.image_size = c.synth_image_size;
  const auto studies = ihn::data::generate_synthetic(so);
  const auto test = ihn::data::studies_of_split(studies, "test");
  const auto images = ihn::data::images_of_split(studies, "test");
  const auto& ids = j.at("per_example_data").at("ids");
  REQUIRE(ids[0].get<std::string>() == test[0].id);
  ihn::data::write_png(images[0][0], (root / "frontal.png").string());
  ihn::data::write_png(images[0][1], (root / "lateral.png").string());
  ihn_examples::train::GenerateOptions go;
  go.checkpoint = eo.checkpoint;
  go.images = {(root / "frontal.png").string(), (root / "lateral.png").string()};
  REQUIRE(ihn_examples::train::generate_report(go) ==
          j.at("per_example_data").at("hypotheses")[0].get<std::string>());

  // Bad inputs: each error names the file.
  go.images = {(root / "absent.png").string()};
  REQUIRE_THROWS_WITH(ihn_examples::train::generate_report(go),
                      Catch::Contains("absent.png") && Catch::Contains("not found"));
  std::ofstream(root / "corrupt.png") << "this is not a PNG";
  go.images = {(root / "corrupt.png").string()};
  REQUIRE_THROWS_WITH(ihn_examples::train::generate_report(go),
                      Catch::Contains("corrupt.png") && Catch::Contains("cannot decode"));
  eo.checkpoint = (root / "missing.pt").string();
  REQUIRE_THROWS_WITH(ihn_examples::train::evaluate_checkpoint(eo),
                      Catch::Contains("missing.pt") && Catch::Contains("not found"));
  std::ofstream(root / "garbage.pt") << "garbage";
  eo.checkpoint = (root / "garbage.pt").string();
  REQUIRE_THROWS_WITH(ihn_examples::train::evaluate_checkpoint(eo), Catch::Contains("garbage.pt"));

  // Wrong vocabulary: the checkpoint evaluated on an annotation with other words.
  auto other = studies;
  for (auto& s : other) s.study.report = "zebra giraffe okapi . zebra giraffe okapi .";
  ihn::data::write_synthetic(other, (root / "other").string());
  eo.checkpoint = (root / "run" / "best.pt").string();
  eo.ann = (root / "other" / "annotation.json").string();
  eo.images = (root / "other" / "images").string();
  REQUIRE_THROWS_WITH(ihn_examples::train::evaluate_checkpoint(eo),
                      Catch::Contains("vocabulary") && Catch::Contains("best.pt"));
}

TEST_CASE("train: bad options are refused with the option's name", "[train]") {
  auto c = tiny("unused");
  c.ihn = "official";
  c.schedule = "linear:10";
  REQUIRE_THROWS_WITH(ihn_examples::train::validate(c), Catch::Contains("exp:ALPHA"));
  c.schedule = "exp:0.01";
  REQUIRE_NOTHROW(ihn_examples::train::validate(c));
  c.ihn = "sometimes";
  REQUIRE_THROWS_WITH(ihn_examples::train::validate(c), Catch::Contains("--ihn sometimes"));
  c.ihn = "paper";
  c.schedule = "exp:";
  REQUIRE_THROWS_WITH(ihn_examples::train::validate(c), Catch::Contains("--schedule"));
  c.schedule = "exp:0.01";
  c.data = "annotation";
  c.ann = "nowhere/annotation.json";
  REQUIRE_THROWS_WITH(ihn_examples::train::validate(c), Catch::Contains("nowhere/annotation.json"));
  auto r = tiny(ihn_test::scratch_dir("train_noresume").string());
  r.resume = true;
  REQUIRE_THROWS_WITH(ihn_examples::train::train(r), Catch::Contains("last.pt"));
  // The config survives JSON, and unknown keys are refused.
  const auto j = ihn_examples::train::to_json(tiny("x"));
  REQUIRE(ihn_examples::train::to_json(ihn_examples::train::config_from_json(j)) == j);
  auto k = j;
  k["bogus"] = 1;
  REQUIRE_THROWS_AS(ihn_examples::train::config_from_json(k), TrainError);
}

TEST_CASE("compare: statistics find a real difference and none between equal runs", "[train]") {
  // Two seeds, 30 studies each; arm B copies the references except for 4 studies per seed.
  auto make = [](bool good, int seed) {
    nlohmann::json e;
    std::vector<std::string> ids, hyps, refs;
    std::vector<long> ranks;
    for (int i = 0; i < 30; ++i) {
      ids.push_back("s" + std::to_string(i));
      const std::string ref = i % 3 == 0 ? "the heart is enlarged . there is a small left pleural "
                                           "effusion ."
                                         : "the lungs are clear . no pneumothorax or pleural "
                                           "effusion . heart size normal " +
                                               std::to_string(i % 5) + " .";
      refs.push_back(ref);
      hyps.push_back(good && i % 8 != seed ? ref : "the lungs are clear .");
      ranks.push_back(good ? 1 : 2 + i % 3);
    }
    e["per_example_data"] = {
        {"ids", ids}, {"hypotheses", hyps}, {"references", refs}, {"i2r_ranks", ranks}};
    return e;
  };
  std::vector<std::vector<nlohmann::json>> evals = {{make(false, 0), make(false, 1)},
                                                    {make(true, 0), make(true, 1)}};
  auto rows = ihn_examples::train::compare_evaluations(evals, 200, 0);
  REQUIRE(rows.size() == 11);
  for (const auto& r : rows) {
    INFO(r.metric);
    if (r.metric == "distinct reports") continue;
    REQUIRE(r.difference > 0);
    REQUIRE(r.significant);
  }
  evals[1] = evals[0];
  rows = ihn_examples::train::compare_evaluations(evals, 200, 0);
  for (const auto& r : rows) {
    REQUIRE(r.difference == 0);
    REQUIRE_FALSE(r.significant);
  }
  const auto md = ihn_examples::train::compare_markdown(rows);
  REQUIRE(md.find("| BLEU-4 |") != std::string::npos);
}
