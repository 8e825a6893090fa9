// `ihn generate`: one report for one study (frontal and optionally lateral image).
#include "command.hpp"
#include "train/train.hpp"

#include <cstdio>
#include <memory>

namespace {

void add_generate_command(CLI::App& app) {
  auto options = std::make_shared<ihn_examples::train::GenerateOptions>();
  auto* cmd = app.add_subcommand("generate", "Write a report for one study's images");
  cmd->add_option("--checkpoint", options->checkpoint, "A checkpoint written by ihn train")
      ->required();
  cmd->add_option("--image", options->images, "Frontal image, then optionally the lateral")
      ->required();
  cmd->add_option("--beam-size", options->beam_size, "Beam size (default: the run's)");
  cmd->add_option("--device", options->device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--ann", options->ann,
                  "Rebuild R2Gen's vocabulary for an authors' checkpoint (not yet supported)");
  cmd->footer(R"(DESCRIPTION
  Loads the image(s) (PNG or JPEG, gray or RGB), applies the run's evaluation transform
  (resize to the training size, ImageNet normalisation) and beam-searches a report. A model
  trained on two views (IU X-Ray) given one image uses it for both views.

EXAMPLES
  ihn generate --checkpoint runs/ihn/best.pt --image study/0.png --image study/1.png)");
  cmd->callback(
      [options] { std::printf("%s\n", ihn_examples::train::generate_report(*options).c_str()); });
}

}  // namespace

IHN_REGISTER_COMMAND(30, add_generate_command);
