// `ihn pretrain`: a visual extractor pretrained as a 14-observation classifier on a labelled
// synthetic set of its own seed, for `ihn train --visual-init FILE` (toolkit/train).
#include "command.hpp"
#include "train/pretrain.hpp"
#include "train/train.hpp"

#include <fmt/core.h>

#include <cstdio>
#include <memory>

namespace {

using ihn_toolkit::train::PretrainConfig;

struct PretrainArgs {
  PretrainConfig config;
  std::string out = "runs/pretrain/visual.pt";
};

void add_pretrain_command(CLI::App& app) {
  auto a = std::make_shared<PretrainArgs>();
  auto* cmd = app.add_subcommand(
      "pretrain", "Pretrain a visual extractor on labelled synthetic studies (for --visual-init)");
  auto& c = a->config;
  cmd->add_option("--out", a->out, "The file to write")->capture_default_str();
  cmd->add_option("--visual-depth", c.visual_depth, "ResNet depth: 18, 34, 50, 101 or 152")
      ->capture_default_str();
  cmd->add_option("--views", c.views, "Views per study: 1 (frontal) or 2 (frontal + lateral)")
      ->capture_default_str();
  cmd->add_option("--studies", c.synth_studies,
                  "Synthetic studies (70% train, 10% val, 20% held out)")
      ->capture_default_str();
  cmd->add_option("--synth-seed", c.synth_seed,
                  "Seed of the synthetic set: not the one the generator is scored on")
      ->capture_default_str();
  cmd->add_option("--synth-image-size", c.synth_image_size, "Rendered image side")
      ->capture_default_str();
  cmd->add_option("--resize", c.resize, "Train: shorter side before the random crop")
      ->capture_default_str();
  cmd->add_option("--image-size", c.crop, "Image side fed to the network (crop)")
      ->capture_default_str();
  cmd->add_option("--epochs", c.epochs, "Epochs")->capture_default_str();
  cmd->add_option("--batch-size", c.batch_size, "Studies per batch")->capture_default_str();
  cmd->add_option("--lr", c.lr, "Adam learning rate")->capture_default_str();
  cmd->add_option("--weight-decay", c.weight_decay, "Adam weight decay")->capture_default_str();
  cmd->add_option("--flip", c.flip_probability,
                  "Probability of a horizontal flip in training (0: sides stay where they are)")
      ->capture_default_str();
  cmd->add_option("--seed", c.seed, "Seed of the initialisation and the order")
      ->capture_default_str();
  cmd->add_option("--threads", c.threads, "Intra-op threads (0 = LibTorch's default)");
  cmd->add_flag("--quiet", c.quiet, "No progress lines");
  cmd->footer(R"(DESCRIPTION
  Trains the generator's visual extractor (a torchvision-structured ResNet, every view through
  it, pooled features concatenated) with one linear layer as a multi-label classifier of the 14
  CheXpert observations, binary cross-entropy, Adam, the generator's random crop (no flip by
  default: it would swap the sides of the findings), on
  the train and validation splits of a synthetic set generated from --synth-seed. Its test
  split gives the held-out mean AUC and macro F1 printed at the end (and stored in the file).

  This is the field's usual start of a report generator — an encoder pretrained on labelled
  images (CheXpert or ImageNet) — on data disjoint from the set the generator is trained and
  scored on. `ihn train --pretrain` does the same with the generator's geometry and caches the
  file; `ihn train --visual-init FILE` starts from a file written here.

EXAMPLES
  ihn pretrain --out runs/pretrain/r18.pt --threads 2
  ihn train --visual-init runs/pretrain/r18.pt --freeze-visual --out runs/base)");
  cmd->callback([a] {
    const auto r = ihn_toolkit::train::pretrain_visual_extractor(a->config, a->out);
    if (a->config.quiet) fmt::print("{}\n", r.metrics.dump());
  });
}

}  // namespace

IHN_REGISTER_COMMAND(15, add_pretrain_command);
