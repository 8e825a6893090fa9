// Evaluation and generation from a checkpoint (train.hpp: evaluate_checkpoint, generate_report),
// the images of a run's studies for the HTML report, and what produced a result (provenance).
#include "train/session.hpp"

#include <ihn/eval.hpp>
#include <ihn/version.hpp>

#include "data/image.hpp"

#include <torch/version.h>

#include <cmath>
#include <ctime>
#include <set>

namespace ihn_toolkit::train {

using namespace session;  // NOLINT: the trainer's shared pieces
// ------------------------------------------------------------------------------------------
// Evaluation and generation

TrainConfig session::evaluation_config(const EvaluateOptions& options, TrainConfig c) {
  if (!options.ann.empty()) {
    c.data.source = "annotation";
    c.data.ann = options.ann;
    c.data.images = options.images.empty() ? c.data.images : options.images;
  }
  c.data.skip_bad = c.data.skip_bad || options.skip_bad;
  if (!options.precision.empty()) c.optim.precision = options.precision;
  c.run.out = "-";
  c.model.visual_init.clear();
  c.model.pretraining.enabled = c.model.freeze_visual = false;
  validate(c);
  return c;
}

namespace {

const ihn_toolkit::data::ReportDataset& split_of(const RunData& data, const std::string& name) {
  const ihn_toolkit::data::ReportDataset* split = name == "test"    ? data.test.get()
                                                  : name == "val"   ? data.val.get()
                                                  : name == "train" ? data.train.get()
                                                                    : nullptr;
  if (!split) throw TrainError("--split " + name + ": use train, val or test");
  if (*split->size() == 0) throw TrainError("split '" + name + "' is empty");
  return *split;
}

/// "retrieval" (R@K both ways from the model's features) and "per_example_data" (each study's
/// reports, the rank of its own report and its three closest reports) of `j`.
void add_retrieval(json& j, const Decoded& dec) {
  const auto images = to_matrix(dec.image_features), reports = to_matrix(dec.report_features);
  const auto ret = ihn::eval::retrieval_scores(images, reports);
  auto recall = [](const ihn::eval::RetrievalScores& r) {
    return json{{"R@1", r.recall_at_1},
                {"R@5", r.recall_at_5},
                {"R@10", r.recall_at_10},
                {"median_rank", r.median_rank}};
  };
  j["retrieval"] = {{"image_to_report", recall(ret.image_to_report)},
                    {"report_to_image", recall(ret.report_to_image)},
                    {"features",
                     "image: mean of R2Gen's encoder output; report: masked mean of the final "
                     "decoder states on the reference (teacher forcing); cosine similarity"}};
  const auto nearest = ihn::eval::nearest_reports(images, reports, 3);
  j["per_example_data"] = {{"ids", dec.ids},
                           {"hypotheses", dec.hypotheses},
                           {"references", dec.references},
                           {"i2r_ranks", ret.image_to_report.ranks},
                           {"i2r_nearest", nearest.index},
                           {"i2r_nearest_similarity", nearest.similarity}};
}

}  // namespace

json session::score_decoded(const EvaluateOptions& options, const TrainConfig& c,
                            const Decoded& dec, int beam) {
  if (!options.reports_out.empty()) write_reports(options.reports_out, dec);

  std::vector<ihn::eval::Example> examples;
  for (size_t i = 0; i < dec.ids.size(); ++i)
    examples.push_back({dec.ids[i], dec.hypotheses[i], dec.references[i]});
  ihn::eval::EvalOptions eo;
  std::string note;
  eo.meteor_options =
      meteor_options(options.wordnet.empty() ? c.eval.wordnet : options.wordnet, &note);
  eo.bootstrap = {options.bootstrap, options.bootstrap_seed, 0.95};
  json j = ihn::eval::to_json(ihn::eval::evaluate(examples, eo));
  add_retrieval(j, dec);
  j["checkpoint"] = options.checkpoint;
  j["split"] = options.split;
  j["beam_size"] = beam;
  if (!note.empty()) j["notes"]["wordnet"] = note;
  // The data and model it ran on (the HTML report rebuilds the images from it), without how the
  // run was driven (a resumed run's evaluation is the same result), and what produced it.
  j["config"] = to_json(c);
  for (const char* runtime : {"out", "resume", "threads", "quiet", "plots", "label", "stop_after"})
    j["config"].erase(runtime);
  j["provenance"] = provenance();
  return j;
}

namespace {

template <class Model>
json evaluate_model(const EvaluateOptions& options, const LoadedCheckpoint<Model>& ck) {
  const TrainConfig c = evaluation_config(options, ck.config);
  if (options.threads > 0) at::set_num_threads(options.threads);
  const auto device = parse_device(options.device);
  RunData data = build_data(c);
  if (data.tokenizer.tokens() != ck.tokenizer.tokens())
    throw TrainError(options.checkpoint + ": its vocabulary (" +
                     std::to_string(ck.tokenizer.vocab_size()) +
                     " tokens) differs from the one built from the data (" +
                     std::to_string(data.tokenizer.vocab_size()) +
                     " tokens): evaluate with the annotation the model was trained on");
  Model model = ck.model;
  place_model(model, c, device);
  const int beam = beam_size_for(options.beam_size, c);
  return score_decoded(
      options, c,
      decode_split(model, split_of(data, options.split), ck.tokenizer, c, beam, device, true),
      beam);
}

template <class Model>
std::string generate_with_model(const GenerateOptions& options, const LoadedCheckpoint<Model>& ck) {
  const TrainConfig& c = ck.config;
  if (!options.ann.empty() && !ck.authors)
    throw TrainError("--ann rebuilds the vocabulary of an authors' .pth; " + options.checkpoint +
                     " was written by ihn train and carries its own: leave --ann out");
  const auto device = parse_device(options.device);
  ihn_toolkit::data::TransformOptions t = ihn_toolkit::data::TransformOptions::r2gen_eval();
  t.resize = c.data.crop;
  t.crop = c.data.crop;
  ihn_toolkit::data::ImageTransform transform(t);
  std::mt19937_64 rng(0);  // unused by the eval transform
  std::vector<at::Tensor> views;
  for (const auto& path : options.images) {
    if (!fs::exists(path)) throw TrainError(path + ": image not found");
    ihn_toolkit::data::Image img;
    try {
      img = ihn_toolkit::data::load_image_rgb(path);
    } catch (const std::exception& e) {
      throw TrainError(path + ": cannot decode the image (" + e.what() +
                       "); give a PNG or JPEG chest X-ray");
    }
    views.push_back(transform(img, rng));
  }
  const int64_t want = views_of(c);
  while (static_cast<int64_t>(views.size()) < want) views.push_back(views.front());
  views.resize(static_cast<size_t>(want));
  auto images = torch::stack(views).unsqueeze(0).to(device);
  Model model = ck.model;
  place_model(model, c, device);
  model->eval();
  torch::NoGradGuard no_grad;
  const int beam = beam_size_for(options.beam_size, c);
  auto res = model->beam_search(
      images, nn::BeamSearchOptions().beam_size(beam).max_length(c.data.max_seq_length));
  return ck.tokenizer.decode(row_ids(res.seq[0]));
}

}  // namespace

namespace {

/// `image` reduced (never enlarged) so that its longer side is at most `max_side`, as JPEG.
std::string thumbnail_jpeg(const ihn_toolkit::data::Image& image, int max_side) {
  const int longer = std::max(image.width, image.height);
  if (longer <= max_side) return ihn_toolkit::data::encode_jpeg(image);
  const double f = static_cast<double>(max_side) / longer;
  return ihn_toolkit::data::encode_jpeg(ihn_toolkit::data::resize_bilinear(
      image, std::max(1, static_cast<int>(std::lround(image.width * f))),
      std::max(1, static_cast<int>(std::lround(image.height * f)))));
}

}  // namespace

StudyImages study_images(const TrainConfig& c, const std::vector<std::string>& ids, int max_side) {
  namespace d = ihn_toolkit::data;
  StudyImages out;
  const std::set<std::string> wanted(ids.begin(), ids.end());
  if (c.data.source == "synth") {
    out.view_names = {"frontal", "lateral"};
    // Studies depend only on (options, index): list them without rendering, render the wanted.
    const auto so = synthetic_options_of(c);
    const auto listed = d::generate_synthetic(so, false);
    for (size_t i = 0; i < listed.size(); ++i)
      if (wanted.count(listed[i].study.id)) {
        const auto s = d::generate_study(so, static_cast<int>(i), true);
        out.jpeg[s.study.id] = {thumbnail_jpeg(s.frontal, max_side),
                                thumbnail_jpeg(s.lateral, max_side)};
      }
    return out;
  }
  d::AnnotationOptions ao;
  ao.dataset = d::parse_dataset(c.data.dataset);
  ao.image_root = c.data.images;
  ao.on_bad_entry = d::OnBadEntry::skip;  // the report shows what it can
  const d::Annotation ann = d::load_annotation(c.data.ann, ao);
  const bool iu = c.data.dataset == "iu_xray";
  for (const auto* split : {&ann.test, &ann.val, &ann.train})
    for (const auto& study : *split) {
      if (!wanted.count(study.id)) continue;
      auto& views = out.jpeg[study.id];
      for (const auto& path : study.image_paths) {
        const std::string file = (fs::path(c.data.images) / path).string();
        try {
          views.push_back(thumbnail_jpeg(d::load_image(file), max_side));
        } catch (const std::exception& e) {
          out.problems.push_back(file + ": " + e.what());
          views.clear();
          break;
        }
      }
      while (out.view_names.size() < views.size())
        out.view_names.push_back(iu ? (out.view_names.empty() ? "frontal" : "lateral")
                                    : "view " + std::to_string(out.view_names.size() + 1));
    }
  return out;
}

json provenance() {
  std::string command;
  {
    std::ifstream in("/proc/self/cmdline", std::ios::binary);
    std::string arg;
    for (int i = 0; std::getline(in, arg, '\0'); ++i) {
      if (i == 0) arg = "ihn";  // the binary's path (or /proc/self/exe for compare's runs)
      const bool quote = arg.empty() || arg.find_first_of(" \t'\"$\\") != std::string::npos;
      std::string q;
      for (char ch : arg) q += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
      command += (command.empty() ? "" : " ") + (quote ? "'" + q + "'" : arg);
    }
  }
  const std::time_t now = std::time(nullptr);
  char utc[32];
  std::strftime(utc, sizeof utc, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return {{"command", command},
          {"ihn", ihn::version_string},
          {"libtorch", TORCH_VERSION},
          {"compiler", std::string(__VERSION__)},
          {"created", utc}};
}

json evaluate_checkpoint(const EvaluateOptions& options) {
  return with_checkpoint_model(options.checkpoint, options.ann, options.images, options.authors,
                               [&](auto, const auto& ck) { return evaluate_model(options, ck); });
}

std::string generate_report(const GenerateOptions& options) {
  if (options.images.empty() || options.images.size() > 2)
    throw TrainError("give one or two --image files (frontal, then lateral)");
  return with_checkpoint_model(
      options.checkpoint, options.ann, "", options.authors,
      [&](auto, const auto& ck) { return generate_with_model(options, ck); });
}

}  // namespace ihn_toolkit::train
