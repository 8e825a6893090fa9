// The run's configuration: JSON (config.json in every checkpoint), presets as data, and the
// validation every config goes through (command line, --config files, checkpoints). Plain C++,
// no LibTorch.
#include "train/internal.hpp"
#include "train/options.hpp"
#include "train/train.hpp"

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace ihn_toolkit::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ------------------------------------------------------------------------------------------
// Configuration

json to_json(const TrainConfig& c) {
  json j;
#define X(path, key, flag, check, help) j[#key] = c.path;
  IHN_TRAIN_OPTIONS(X)
#undef X
  return j;
}

TrainConfig config_from_json(const json& j) {
  TrainConfig c;
  std::set<std::string> known;
  // Each field read on its own, so that a mistyped value names its field.
  auto read = [&](const char* name, auto& target) {
    known.insert(name);
    if (!j.contains(name)) return;
    try {
      j.at(name).get_to(target);
    } catch (const std::exception& e) {  // nlohmann's, or the schedule's and kinds' readers
      throw TrainError(std::string("config: '") + name + "' is " + j.at(name).dump() + " (" +
                       e.what() + ")");
    }
  };
#define X(path, key, flag, check, help) read(#key, c.path);
  IHN_TRAIN_OPTIONS(X)
#undef X
  for (const auto& item : j.items())
    if (!known.count(item.key()))
      throw TrainError("config: unknown key '" + item.key() +
                       "' (written by a newer ihn? rebuild ihn from the same version)");
  return c;
}

namespace {

/// The presets, as data: each sets the fields it names (config.json's keys) over a base preset
/// or over TrainConfig's defaults (which are cpu-small's model), then, for --model cmn, the
/// fields under "cmn". "why" says where the numbers come from.
const json& preset_table() {
  static const json table = json::parse(R"({
  "cpu-small": {
    "why": "Sized so that ihn compare (3 seeds x 2 arms) finishes in minutes on 2 cores: ResNet-18 on 64 px views, one 128-wide layer, trained from scratch at 10x R2Gen's learning rates. The hardness schedule is compressed so that the last epoch reaches the hardness the paper's reaches after ~100 epochs (alpha * epochs ~ 1).",
    "set": {"lr_ve": 5e-4, "lr_ed": 1e-3, "schedule": "exp:0.1"}
  },
  "paper": {
    "why": "R2Gen's IU X-Ray run script (REFERENCE.md), R2GenCMN's for its memory and optimiser, and the paper's ihn defaults.",
    "set": {"synth_image_size": 256, "resize": 256, "crop": 224, "visual_depth": 101,
            "d_model": 512, "d_ff": 512, "rm_d_model": 512, "num_heads": 8, "rm_num_heads": 8,
            "num_layers": 3, "topk": 32, "cmm_size": 2048, "cmm_dim": 512, "epochs": 100,
            "schedule": "exp:0.01"},
    "cmn": {"lr_ve": 1e-4, "lr_ed": 5e-4, "lr_step": 10, "lr_gamma": 0.8, "seed": 7580}
  },
  "cpu-bench": {
    "why": "The main job's calibrated benchmark (docs/results.md): cpu-small's model on 1,500 synthetic studies (300 test), a quarter of them normal, its visual extractor pretrained as a 14-observation classifier on a disjoint synthetic set and kept fixed, 18 epochs, best epoch on validation clinical F1 (macro). Chosen on the baseline arm only, on a calibration seed (7) of the synthetic set that the reported run does not use.",
    "base": "cpu-small",
    "set": {"synth_studies": 1500, "synth_normal_fraction": 0.25, "pretrain": true,
            "freeze_visual": true, "epochs": 18, "select_metric": "clinical_f1_macro"}
  },
  "cpu-bench-full": {
    "why": "The same benchmark at four times the size (1,200 test studies), trained longer.",
    "base": "cpu-bench",
    "set": {"synth_studies": 6000, "pretrain_studies": 6000, "pretrain_epochs": 10, "epochs": 20}
  },
  "gpu-bench": {
    "why": "The benchmark at the paper's model size (ResNet-101 at 224 px, three 512-wide layers) on 6,000 studies rendered at 256 px, for a GPU (--device cuda).",
    "base": "paper",
    "set": {"synth_studies": 6000, "pretrain": true, "pretrain_studies": 6000,
            "pretrain_epochs": 10, "freeze_visual": true, "epochs": 30, "lr_ed": 5e-4,
            "schedule": "exp:0.05", "select_metric": "clinical_f1_macro"}
  },
  "cmn": {
    "why": "R2GenCMN's official optimiser: no gradient clipping, Adam betas (0.9, 0.98), eps 1e-9.",
    "set": {"grad_clip": 0, "adam_beta1": 0.9, "adam_beta2": 0.98, "adam_eps": 1e-9}
  }
})");
  return table;
}

/// `fields` (config.json keys) over `c`, through the same reader as config files.
void set_fields(TrainConfig& c, const json& fields) {
  json j = to_json(c);
  j.update(fields);
  c = config_from_json(j);
}

void apply_preset_fields(TrainConfig& c, const std::string& name) {
  const json& table = preset_table();
  if (name == "cmn" || !table.contains(name))
    throw TrainError("unknown preset '" + name +
                     "' (use paper, cpu-small, cpu-bench, cpu-bench-full or gpu-bench)");
  const json& preset = table.at(name);
  if (preset.contains("base")) apply_preset_fields(c, preset.at("base").get<std::string>());
  set_fields(c, preset.at("set"));
  if (c.model.architecture == "cmn" && preset.contains("cmn")) set_fields(c, preset.at("cmn"));
}

}  // namespace

void apply_preset(TrainConfig& c, const std::string& name) {
  apply_preset_fields(c, name);
  if (c.model.architecture == "cmn") set_fields(c, preset_table().at("cmn").at("set"));
  c.run.preset = name;
}

double official_alpha_of(const ihn::HardnessSchedule& schedule) {
  const auto* exp = std::get_if<ihn::ExponentialHardness>(&schedule);
  if (!exp || exp->unit != ihn::ScheduleUnit::epoch)
    throw TrainError(
        "--ihn official follows the release's exp:ALPHA schedule (per epoch); got "
        "--schedule " +
        ihn::to_string(schedule));
  return exp->alpha;
}

namespace {

// One check per kind of field, from its OptionCheck (options.hpp). Every number must be finite:
// NaN or Inf would train and then write checkpoints that cannot be read; the upper bounds, far
// above any published recipe, stop a typo or a corrupt checkpoint from asking LibTorch for
// terabytes; the lower ones, a zero head count from dividing by zero deep inside LibTorch.
void check_option(const TrainConfig& c, const char* flag, double v, const OptionCheck& k) {
  if (k.model && c.model.architecture != k.model) return;
  if (!std::isfinite(v))
    throw TrainError(fmt::format("{} must be a finite number (got {})", flag, v));
  if (k.min_open ? !(v > k.min) : v < k.min)
    throw TrainError(
        fmt::format("{} must be {} {} (got {})", flag, k.min_open ? ">" : ">=", k.min, v));
  if (k.max_open ? !(v < k.max) : v > k.max)
    throw TrainError(
        fmt::format("{} must be {} {} (got {})", flag, k.max_open ? "<" : "<=", k.max, v));
}
void check_option(const TrainConfig& c, const char* flag, int v, const OptionCheck& k) {
  check_option(c, flag, static_cast<double>(v), k);
}
void check_option(const TrainConfig& c, const char* flag, int64_t v, const OptionCheck& k) {
  check_option(c, flag, static_cast<double>(v), k);
}
void check_option(const TrainConfig&, const char*, uint64_t, const OptionCheck&) {}  // seeds
void check_option(const TrainConfig&, const char*, bool, const OptionCheck&) {}
// The schedule and the alignment kind are checked by their readers (config.hpp).
void check_option(const TrainConfig&, const char*, const ihn::HardnessSchedule&,
                  const OptionCheck&) {}
void check_option(const TrainConfig&, const char*, ihn::AlignmentKind, const OptionCheck&) {}
void check_option(const TrainConfig& c, const char* flag, const std::string& v,
                  const OptionCheck& k) {
  if (!k.choices || (k.model && c.model.architecture != k.model)) return;
  std::vector<std::string> choices;
  for (std::string_view rest = k.choices;;) {
    const auto bar = rest.find('|');
    choices.emplace_back(rest.substr(0, bar));
    if (bar == std::string_view::npos) break;
    rest.remove_prefix(bar + 1);
  }
  if (std::find(choices.begin(), choices.end(), v) != choices.end()) return;
  std::string list;
  for (size_t i = 0; i < choices.size(); ++i)
    list += (i == 0 ? "" : i + 1 == choices.size() ? " or " : ", ") + choices[i];
  throw TrainError(fmt::format("{} {}: use {}", flag, v, list));
}

// What one field cannot say alone, per component.
void check_data(const DataConfig& d) {
  if (d.resize < d.crop) throw TrainError("--resize must be >= --image-size (the crop)");
  if (d.source != "synth" && d.source != "annotation")
    throw TrainError("--data " + d.source + ": use synth, or give --ann and --images");
  if (d.source == "annotation" && d.ann.empty())
    throw TrainError("--ann is required unless --data synth");
  if (d.synthetic.val_fraction + d.synthetic.test_fraction >= 1)
    throw TrainError("--synth-val-fraction and --synth-test-fraction must sum to < 1");
  if (d.views == 2 && d.dataset == "mimic_cxr")
    throw TrainError("--views 2: MIMIC-CXR studies are single-view in R2Gen's protocol");
}

void check_model(const ModelConfig& m) {
  if (m.visual_depth != 18 && m.visual_depth != 34 && m.visual_depth != 50 &&
      m.visual_depth != 101 && m.visual_depth != 152)
    throw TrainError("--visual-depth " + std::to_string(m.visual_depth) +
                     ": use 18, 34, 50, 101 or 152");
  if (m.d_model % m.num_heads != 0)
    throw TrainError("--num-heads " + std::to_string(m.num_heads) + " must divide --d-model " +
                     std::to_string(m.d_model));
  const auto& rm = m.relational_memory;
  if (m.architecture == "r2gen" && rm.d_model % rm.num_heads != 0)
    throw TrainError("--rm-num-heads " + std::to_string(rm.num_heads) +
                     " must divide --rm-d-model " + std::to_string(rm.d_model));
  const auto& cmm = m.cross_modal_memory;
  if (m.architecture == "cmn" && cmm.size < cmm.topk)
    throw TrainError("--cmm-size " + std::to_string(cmm.size) + " must be >= --topk " +
                     std::to_string(cmm.topk));
  if (m.freeze_visual && m.visual_init.empty() && !m.pretraining.enabled)
    throw TrainError(
        "--freeze-visual keeps the visual extractor fixed: give it pretrained "
        "weights (--pretrain or --visual-init FILE)");
}

void check_ihn(const TrainConfig& c) {
  const auto& h = c.ihn;
  if (h.mode == "official") official_alpha_of(h.library.schedule());
  if (h.mode != "official" && (h.official_legacy || !h.negatives_file.empty()))
    throw TrainError(std::string(h.official_legacy ? "--official-legacy" : "--negatives-file") +
                     " belongs to --ihn official (got --ihn " + h.mode + ")");
  if (h.mode == "paper" && h.report_features == "text" && c.model.architecture != "r2gen")
    throw TrainError("--report-features text is implemented for --model r2gen only");
}

}  // namespace

void validate_recipe(const TrainConfig& c) {
  {
    using namespace checks;
#define X(path, key, flag, check, help) check_option(c, flag, c.path, check);
    IHN_TRAIN_OPTIONS(X)
#undef X
  }
  check_data(c.data);
  check_model(c.model);
  check_ihn(c);
  if (c.run.device != "cpu" && c.run.device.rfind("cuda", 0) != 0)
    throw TrainError("--device " + c.run.device + ": use cpu or cuda");
  if (c.optim.precision == "fp16" && c.run.device == "cpu")
    throw TrainError(
        "--precision fp16 runs on CUDA only (LibTorch's CPU autocast has no float16 kernels); "
        "on the CPU use --precision bf16");
  const auto& pretraining = c.model.pretraining;
  if (pretraining.enabled && pretraining.seed == c.data.synthetic.seed && c.data.source == "synth")
    throw TrainError("--pretrain-seed " + std::to_string(pretraining.seed) +
                     " is the seed of the generator's own synthetic set: pretrain on a "
                     "disjoint set (another seed)");
}

void validate(const TrainConfig& c) {
  validate_recipe(c);
  const auto& d = c.data;
  if (d.source == "annotation") {
    if (!fs::exists(d.ann))
      throw TrainError(d.ann + ": annotation file not found (give R2Gen's annotation.json)");
    if (d.images.empty() || !fs::is_directory(d.images))
      throw TrainError("--images '" + d.images + "': not a folder (the image root of " + d.ann +
                       ")");
  }
  if (!c.ihn.negatives_file.empty() && !fs::exists(c.ihn.negatives_file))
    throw TrainError(c.ihn.negatives_file +
                     ": negatives file not found (write it with `ihn data negatives`, or leave "
                     "--negatives-file out to mine them at start-up)");
  if (!c.model.visual_init.empty() && !c.run.resume && !fs::exists(c.model.visual_init))
    throw TrainError("--visual-init " + c.model.visual_init +
                     ": file not found (write one with `ihn pretrain`, or use --pretrain)");
  if (c.run.out.empty()) throw TrainError("--out RUN_DIR is required");
}

int views_of(const TrainConfig& c) {
  if (c.data.views > 0) return c.data.views;
  return c.data.dataset == "mimic_cxr" || c.ihn.mode == "official" ? 1 : 2;
}

}  // namespace ihn_toolkit::train
