// `ihn report DIR`: rebuilds report.html of a compare, evaluate or train folder from its files.
#include "command.hpp"
#include "html_report.hpp"

#include <memory>

namespace {

void add_report_command(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("report",
                                 "Rebuild report.html of an ihn compare, evaluate or train folder");
  cmd->add_option("DIR", *dir, "A folder written by ihn compare, ihn evaluate or ihn train")
      ->required();
  cmd->footer(R"(DESCRIPTION
  One self-contained HTML file (images embedded, no network) that opens from the file system:
  the results table (compare: each arm against off, significant differences marked, intervals
  shown), the training curves and per-observation F1 as charts, and every test study with its
  views, the reference and each arm's report. Each sentence carries the labeller's findings,
  marked against the reference's: true positive, false positive, missed. The gallery filters
  (all, abnormal only, arms differ, with errors, by observation) and is keyboard navigable
  (j / k). Run folders and evaluate folders also show the reports closest to each image in the
  model's feature space. The charts are written beside it as SVG files too.

  The images are rebuilt from the run's data: the synthetic set from its seed, or the
  annotation's image files (a study whose image cannot be read is shown without it).

WHAT IT READS
  compare folder   compare.json, seed_S/ARM/{test.json,log.jsonl,config.json}
  evaluate folder  evaluation.json (ihn evaluate), the checkpoint folder's log.jsonl
  train folder     test.json, log.jsonl, config.json

EXAMPLES
  ihn report runs/compare
  ihn report runs/ihn
  ihn report runs/ihn/evaluate_test)");
  cmd->callback([dir] { ihn::cli::write_html_report(*dir); });
}

}  // namespace

IHN_REGISTER_COMMAND(45, add_report_command);
