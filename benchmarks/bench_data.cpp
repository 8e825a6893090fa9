// Data throughput: images/s through PNG decode + R2Gen's train transform with 0, 1 and 2 loader
// workers (files on disk, and in memory), synthetic data set generation in studies/s, and
// tokenizer throughput. One intra-op thread (at::set_num_threads(1)); workers add threads.
//
// Usage: bench_data [studies=64] [image_size=512] [epochs=2]
#include <data/loader.hpp>
#include <data/synthetic.hpp>
#include <nn/allocator.hpp>

#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>

using namespace ihn_toolkit::data;

namespace {
double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
}  // namespace

int main(int argc, char** argv) {
  ihn_toolkit::nn::keep_freed_memory();  // as the ihn tool (nn/allocator.hpp)
  const int studies = argc > 1 ? std::stoi(argv[1]) : 64;
  const int image_size = argc > 2 ? std::stoi(argv[2]) : 512;
  const int epochs = argc > 3 ? std::stoi(argv[3]) : 2;
  at::set_num_threads(1);
  std::printf(
      "bench_data: %d studies x 2 views, %dx%d PNG, %d epochs, intra-op threads 1, "
      "hardware threads %u\n",
      studies, image_size, image_size, epochs, std::thread::hardware_concurrency());

  // Synthetic generation rate (content + two rendered views), at the default and this size.
  for (int size : {128, image_size}) {
    SyntheticOptions options;
    options.studies = studies;
    options.image_size = size;
    const auto start = std::chrono::steady_clock::now();
    const auto generated = generate_synthetic(options);
    const double elapsed = seconds_since(start);
    std::printf("synthetic generation %4d px: %8.1f studies/s\n", size, studies / elapsed);
  }
  SyntheticOptions options;
  options.studies = studies;
  options.image_size = image_size;
  options.val_fraction = options.test_fraction = 0;
  const auto generated = generate_synthetic(options);
  {
    const auto start = std::chrono::steady_clock::now();
    size_t reports = 0;
    for (int repeat = 0; repeat < 20; ++repeat)
      for (const auto& s : generated) reports += clean_report_iu_xray(s.study.report).size() > 0;
    std::printf("IU X-Ray cleaning:         %8.0f reports/s\n", reports / seconds_since(start));
  }
  const auto dir = std::filesystem::temp_directory_path() / "ihn_bench_data";
  std::filesystem::remove_all(dir);
  write_synthetic(generated, dir.string());
  const auto annotation = load_annotation((dir / "annotation.json").string());
  const auto tokenizer = Tokenizer::build(annotation.train_reports(), Dataset::iu_xray, 3);

  ReportDatasetOptions dataset_options;
  dataset_options.image_root = (dir / "images").string();
  dataset_options.transform = TransformOptions::r2gen_train();
  const ReportDataset on_disk(annotation.train, tokenizer, dataset_options);
  const ReportDataset in_memory(studies_of_split(generated, "train"),
                                images_of_split(generated, "train"), tokenizer, dataset_options);
  std::printf("%-28s %8s %10s %10s\n", "source", "workers", "images/s", "batches");
  for (const auto* dataset : {&on_disk, &in_memory}) {
    for (size_t workers : {0, 1, 2}) {
      size_t images = 0, batches = 0;
      const auto start = std::chrono::steady_clock::now();
      for (int epoch = 0; epoch < epochs; ++epoch) {
        auto loader = make_report_loader(dataset->with_epoch(epoch), {16, workers, true, false});
        for (auto& batch : *loader) {
          images += static_cast<size_t>(batch.images.size(0) * batch.images.size(1));
          ++batches;
        }
      }
      std::printf("%-28s %8zu %10.1f %10zu\n",
                  dataset == &on_disk ? "PNG decode + train transform" : "memory + train transform",
                  workers, images / seconds_since(start), batches);
    }
  }
  std::filesystem::remove_all(dir);
  return 0;
}
