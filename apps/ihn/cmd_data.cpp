// `ihn data`: inspect an R2Gen annotation (`ihn data stats`), write the synthetic data set
// (`ihn data synth`) and mine the offline negatives of the official-compatible mode
// (`ihn data negatives`). All use ihn_toolkit::data, the same code the training ports load data
// with.
#include "command.hpp"

#include <data/annotation.hpp>
#include <data/image.hpp>
#include <data/negatives.hpp>
#include <data/synthetic.hpp>
#include <data/tokenizer.hpp>

#include <nlohmann/json.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <numeric>

namespace {

struct StatsArgs {
  std::string annotation;
  std::string dataset = "iu_xray";
  std::string image_root;
  int threshold = -1;
  int max_seq_length = -1;
  bool skip_bad = false;
  bool decode_images = false;
  bool json = false;
};

struct LengthStats {
  size_t count = 0;
  double mean = 0;
  int64_t p95 = 0;
  int64_t max = 0;
  size_t over_max = 0;
};

// Lengths in tokens of the cleaned report (without BOS/EOS); "over" counts reports whose
// [0] + ids + [0] exceeds max_seq_length, i.e. those R2Gen truncates.
LengthStats length_stats(const std::vector<ihn_toolkit::data::Study>& studies,
                         const ihn_toolkit::data::Tokenizer& tokenizer, int max_seq_length) {
  LengthStats stats;
  std::vector<int64_t> lengths;
  for (const auto& study : studies)
    lengths.push_back(static_cast<int64_t>(tokenizer.encode(study.report).size()) - 2);
  stats.count = lengths.size();
  if (lengths.empty()) return stats;
  std::sort(lengths.begin(), lengths.end());
  stats.mean = std::accumulate(lengths.begin(), lengths.end(), 0.0) / lengths.size();
  // Nearest-rank percentile: the smallest length with at least 95% of reports at or below it.
  const size_t rank = static_cast<size_t>(std::ceil(0.95 * lengths.size()));
  stats.p95 = lengths[std::max<size_t>(rank, 1) - 1];
  stats.max = lengths.back();
  for (auto length : lengths) stats.over_max += length + 2 > max_seq_length;
  return stats;
}

void run_stats(const StatsArgs& args) {
  using namespace ihn_toolkit::data;
  Dataset dataset;
  try {
    dataset = parse_dataset(args.dataset);
  } catch (const std::invalid_argument& e) {
    throw ihn::cli::CommandError(e.what(), 2);
  }
  // R2Gen's defaults: IU X-Ray threshold 3 / 60 ids, MIMIC-CXR threshold 10 / 100 ids.
  const int threshold = args.threshold >= 0 ? args.threshold : dataset == Dataset::iu_xray ? 3 : 10;
  const int max_seq_length = args.max_seq_length >= 0      ? args.max_seq_length
                             : dataset == Dataset::iu_xray ? 60
                                                           : 100;
  AnnotationOptions options;
  options.dataset = dataset;
  options.image_root = args.image_root;
  options.on_bad_entry = args.skip_bad ? OnBadEntry::skip : OnBadEntry::fail;
  options.decode_images = args.decode_images;
  Annotation annotation;
  try {
    annotation = load_annotation(args.annotation, options);
  } catch (const AnnotationError& e) {
    throw ihn::cli::CommandError(e.what());
  }
  const auto tokenizer = Tokenizer::build(annotation.train_reports(), dataset, threshold);

  nlohmann::ordered_json out;
  out["annotation"] = args.annotation;
  out["dataset"] = dataset_name(dataset);
  out["threshold"] = threshold;
  out["max_seq_length"] = max_seq_length;
  out["vocab_size"] = tokenizer.vocab_size();
  out["images_checked"] = !args.image_root.empty();
  for (const char* split : {"train", "val", "test"}) {
    const auto stats = length_stats(annotation.split(split), tokenizer, max_seq_length);
    out["splits"][split] = {{"studies", stats.count},
                            {"tokens_mean", stats.mean},
                            {"tokens_p95", stats.p95},
                            {"tokens_max", stats.max},
                            {"over_max_seq_length", stats.over_max}};
  }
  out["problems"] = nlohmann::ordered_json::array();
  for (const auto& problem : annotation.problems)
    out["problems"].push_back({{"split", problem.split},
                               {"index", problem.index},
                               {"id", problem.id},
                               {"problem", problem.problem}});
  if (args.json) {
    std::cout << out.dump(1) << "\n";
    return;
  }
  std::cout << "annotation  " << args.annotation << " (" << dataset_name(dataset) << ")\n"
            << "vocabulary  " << tokenizer.vocab_size()
            << " tokens incl. <unk> (train, count >= " << threshold << "); models use "
            << tokenizer.vocab_size() + 1 << " logits\n"
            << "lengths     in tokens of the cleaned report, without BOS/EOS; 'over' = longer "
               "than max_seq_length "
            << max_seq_length << " with BOS/EOS (truncated)\n";
  fmt::print("{:<6} {:>8} {:>8} {:>6} {:>6} {:>6}\n", "split", "studies", "mean", "p95", "max",
             "over");
  for (const char* split : {"train", "val", "test"}) {
    const auto& s = out["splits"][split];
    fmt::print("{:<6} {:8} {:8.1f} {:6} {:6} {:6}\n", split, s["studies"].get<size_t>(),
               s["tokens_mean"].get<double>(), s["tokens_p95"].get<int64_t>(),
               s["tokens_max"].get<int64_t>(), s["over_max_seq_length"].get<size_t>());
  }
  std::cout << "images      "
            << (args.image_root.empty() ? "not checked (pass --images DIR)"
                                        : "checked under " + args.image_root)
            << "\nproblems    " << annotation.problems.size()
            << (annotation.problems.empty() ? "" : " (entries skipped)") << "\n";
  for (const auto& problem : annotation.problems)
    std::cout << "  " << problem.describe(args.annotation) << "\n";
}

struct SynthArgs {
  std::string out;
  ihn_toolkit::data::SyntheticOptions options;
  std::string contact_sheet;
  int contact_studies = 6;
};

void run_synth(const SynthArgs& args) {
  using namespace ihn_toolkit::data;
  try {
    args.options.validate();
  } catch (const std::invalid_argument& e) {
    throw ihn::cli::CommandError(e.what(), 2);
  }
  if (args.out.empty() && args.contact_sheet.empty())
    throw ihn::cli::CommandError("nothing to do: pass --out DIR and/or --contact-sheet FILE", 2);
  const auto start = std::chrono::steady_clock::now();
  const auto studies = generate_synthetic(args.options);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  size_t normal = 0;
  for (const auto& s : studies) normal += s.findings.empty();
  if (!args.out.empty()) {
    write_synthetic(studies, args.out);
    std::cout << "wrote " << studies.size() << " studies (" << normal << " normal) to " << args.out
              << ": annotation.json, images/, labels.json, labels.csv\n";
  }
  std::cout << "generated in " << seconds << " s (" << studies.size() / seconds
            << " studies/s, seed " << args.options.seed << ", " << args.options.image_size
            << " px)\n";
  if (!args.contact_sheet.empty()) {
    // Normal studies first would show little: take the first abnormal ones, then normals.
    std::vector<SyntheticStudy> shown;
    for (const auto& s : studies)
      if (!s.findings.empty() && static_cast<int>(shown.size()) < args.contact_studies - 1)
        shown.push_back(s);
    for (const auto& s : studies)
      if (s.findings.empty() && static_cast<int>(shown.size()) < args.contact_studies)
        shown.push_back(s);
    write_png(contact_sheet(shown, 2), args.contact_sheet);
    std::cout << "contact sheet of " << shown.size() << " studies: " << args.contact_sheet << "\n";
  }
}

struct NegativesArgs {
  std::string data = "synth";
  std::string annotation;
  std::string dataset = "iu_xray";
  ihn_toolkit::data::SyntheticOptions synth;
  std::string out;
};

// The training split of the annotation (or of the synthetic set `ihn train --data synth`
// generates with the same --studies/--seed), mined with the code the trainer runs at start-up.
void run_negatives(NegativesArgs args) {
  using namespace ihn_toolkit::data;
  std::vector<Study> train;
  std::string source;
  Dataset dataset = Dataset::iu_xray;
  if (!args.annotation.empty()) args.data = "annotation";
  if (args.data == "synth") {
    try {
      args.synth.validate();
    } catch (const std::invalid_argument& e) {
      throw ihn::cli::CommandError(e.what(), 2);
    }
    train = to_annotation(generate_synthetic(args.synth, /*render_images=*/false)).train;
    source = "synth:studies=" + std::to_string(args.synth.studies) +
             ",seed=" + std::to_string(args.synth.seed);
  } else if (args.data == "annotation") {
    try {
      dataset = parse_dataset(args.dataset);
    } catch (const std::invalid_argument& e) {
      throw ihn::cli::CommandError(e.what(), 2);
    }
    AnnotationOptions options;
    options.dataset = dataset;
    try {
      train = load_annotation(args.annotation, options).train;
    } catch (const std::exception& e) {
      throw ihn::cli::CommandError(e.what());
    }
    source = args.annotation;
  } else {
    throw ihn::cli::CommandError("--data " + args.data + ": use synth, or give --ann FILE", 2);
  }
  const auto start = std::chrono::steady_clock::now();
  Negatives negatives;
  try {
    negatives = mine_negatives(train, dataset, source);
    save_negatives(negatives, args.out);
  } catch (const NegativesError& e) {
    throw ihn::cli::CommandError(e.what());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double mean = 0;
  for (double s : negatives.similarity) mean += s;
  mean /= std::max<size_t>(negatives.similarity.size(), 1);
  fmt::print(
      "wrote {}: {} training studies, mean TF-IDF cosine to the negative {:.3f} ({:.2f} s)\n",
      args.out, negatives.ids.size(), mean, seconds);
}

void add_data_command(CLI::App& app) {
  auto* data = app.add_subcommand("data", "Inspect report data sets and write the synthetic one");
  data->require_subcommand(1);

  auto stats_args = std::make_shared<StatsArgs>();
  auto* stats = data->add_subcommand(
      "stats", "Split sizes, vocabulary size, report lengths and problems of an annotation.json");
  stats->add_option("--ann", stats_args->annotation, "R2Gen annotation.json")->required();
  stats->add_option("--dataset", stats_args->dataset, "iu_xray or mimic_cxr")
      ->check(CLI::IsMember({"iu_xray", "mimic_cxr"}));
  stats
      ->add_option("--threshold", stats_args->threshold,
                   "Vocabulary count threshold (default: iu_xray 3, mimic_cxr 10)")
      ->check(CLI::NonNegativeNumber);
  stats->add_option("--max-seq-length", stats_args->max_seq_length,
                    "R2Gen max_seq_length (default: iu_xray 60, mimic_cxr 100)");
  stats->add_option("--images", stats_args->image_root,
                    "Image root: also check that every image exists and is readable");
  stats->add_flag("--decode-images", stats_args->decode_images,
                  "Decode every image instead of reading its header");
  stats->add_flag("--skip-bad", stats_args->skip_bad,
                  "Skip bad entries (listed) instead of failing on them");
  stats->add_flag("--json", stats_args->json, "Print JSON");
  stats->callback([stats_args] { run_stats(*stats_args); });

  auto synth_args = std::make_shared<SynthArgs>();
  auto* synth = data->add_subcommand(
      "synth", "Write the synthetic chest X-ray data set (annotation.json, PNGs, labels)");
  synth->add_option("--out", synth_args->out, "Output folder");
  synth->add_option("--studies", synth_args->options.studies, "Number of studies")
      ->capture_default_str();
  synth->add_option("--seed", synth_args->options.seed, "Seed")->capture_default_str();
  synth->add_option("--image-size", synth_args->options.image_size, "Image side in pixels")
      ->capture_default_str();
  synth
      ->add_option("--normal-fraction", synth_args->options.normal_fraction,
                   "Fraction of normal studies")
      ->capture_default_str();
  synth->add_option("--val-fraction", synth_args->options.val_fraction)->capture_default_str();
  synth->add_option("--test-fraction", synth_args->options.test_fraction)->capture_default_str();
  synth
      ->add_option("--max-findings", synth_args->options.max_findings,
                   "Most findings in one abnormal study")
      ->capture_default_str();
  synth->add_option("--contact-sheet", synth_args->contact_sheet,
                    "Also write a PNG showing a few studies with their reports");
  synth
      ->add_option("--contact-studies", synth_args->contact_studies, "Studies on the contact sheet")
      ->capture_default_str();
  synth->callback([synth_args] { run_synth(*synth_args); });

  auto negatives_args = std::make_shared<NegativesArgs>();
  negatives_args->synth.studies = 300;  // ihn train --data synth's defaults
  negatives_args->synth.image_size = 64;
  auto* negatives = data->add_subcommand(
      "negatives",
      "Per training study, the closest different training report (TF-IDF cosine): the "
      "offline negatives of --ihn official");
  negatives->add_option("--data", negatives_args->data, "synth or annotation")
      ->check(CLI::IsMember({"synth", "annotation"}))
      ->capture_default_str();
  negatives->add_option("--ann", negatives_args->annotation,
                        "R2Gen annotation.json (implies --data annotation; images not needed)");
  negatives->add_option("--dataset", negatives_args->dataset, "iu_xray or mimic_cxr (cleaner)")
      ->check(CLI::IsMember({"iu_xray", "mimic_cxr"}))
      ->capture_default_str();
  negatives->add_option("--studies", negatives_args->synth.studies, "Synthetic studies")
      ->capture_default_str();
  negatives->add_option("--seed", negatives_args->synth.seed, "Synthetic seed")
      ->capture_default_str();
  negatives->add_option("--out", negatives_args->out, "Output JSON")->required();
  negatives->callback([negatives_args] { run_negatives(*negatives_args); });
}

}  // namespace

IHN_REGISTER_COMMAND(60, add_data_command);
