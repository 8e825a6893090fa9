// `ihn generate`: one report for one study (frontal and optionally lateral image), from a
// checkpoint written by ihn train or from the authors' released .pth (official R2Gen code).
#include "command.hpp"
#include "train/train.hpp"
#include "train_options.hpp"

#include <fmt/core.h>

#include <cstdio>
#include <memory>

namespace {

void add_generate_command(CLI::App& app) {
  auto options = std::make_shared<ihn_toolkit::train::GenerateOptions>();
  auto& authors = options->authors;
  auto* cmd = app.add_subcommand("generate", "Write a report for one study's images");
  cmd->add_option("--checkpoint", options->checkpoint,
                  "RUN/best.pt written by ihn train, or an authors' .pth (official R2Gen)")
      ->required();
  cmd->add_option("--image", options->images, "Frontal image, then optionally the lateral")
      ->required();
  ihn::cli::add_beam_size_option(cmd, options->beam_size);
  cmd->add_option("--device", options->device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--ann", options->ann,
                  "Authors' .pth: the annotation.json it was trained on (rebuilds the vocabulary)");
  ihn::cli::add_authors_options(cmd, authors);
  cmd->footer(R"(DESCRIPTION
  Loads the image(s) (PNG or JPEG, gray or RGB), applies the run's evaluation transform
  (resize to the training size, ImageNet normalisation) and beam-searches a report. A model
  trained on two views (IU X-Ray) given one image uses it for both views.

AUTHORS' CHECKPOINTS
  A .pth saved by the official R2Gen trainer (torch.save of epoch, state_dict, optimizer,
  monitor_best; zip or legacy format, DataParallel keys accepted) is recognised by content.
  The architecture and every size (ResNet depth, d_model, d_ff, layers, memory slots, vocabulary,
  positions) are read from the tensor shapes; head counts cannot be and default to the official
  8 (--num-heads, --rm-num-heads). The vocabulary is rebuilt from --ann as R2Gen does (train
  reports, --dataset's cleaning, --threshold) and must match the checkpoint's logit rows. Images
  get R2Gen's test transform: Resize((224, 224)), ImageNet normalisation. R2GenCMN and ITHN
  checkpoints are recognised but need the CMN model, not in this build yet.
  See docs/authors_checkpoints.md.

ERRORS
  A file that is neither an ihn checkpoint nor a torch.save file, an unknown architecture, a
  missing --ann, a vocabulary size that differs from the checkpoint's, or weights that do not fit
  (missing/unexpected keys, shape mismatches, named) stop with exit status 1.

EXAMPLES
  ihn generate --checkpoint runs/ihn/best.pt --image study/0.png --image study/1.png
  ihn generate --checkpoint model_iu_xray.pth --ann data/iu_xray/annotation.json \
      --image data/iu_xray/images/CXR2384_IM-0942/0.png \
      --image data/iu_xray/images/CXR2384_IM-0942/1.png)");
  cmd->callback([options] { fmt::print("{}\n", ihn_toolkit::train::generate_report(*options)); });
}

}  // namespace

IHN_REGISTER_COMMAND(30, add_generate_command);
