// Built against the installed package only: fails to configure, compile, link or run if the
// install (headers, targets, dependencies) is incomplete.
#include <ihn/augmenter.hpp>
#include <ihn/eval/meteor.hpp>
#include <ihn/ihn.hpp>

#include <cmath>
#include <iostream>

namespace {
struct UserModel {};  // features are passed directly; encoder_traits is not needed
}  // namespace

int main() {
  UserModel model;
  ihn::HardNegativeAugmenter<UserModel> augmenter(model, ihn::Options{}.negatives_per_sample(2));
  auto images = at::randn({4, 8}).requires_grad_(true);
  auto reports = at::randn({4, 8}).requires_grad_(true);
  auto loss = augmenter.loss(images, reports, {0, 1, 2, 3});
  loss.backward();
  const double value = loss.item<double>();
  if (!std::isfinite(value) || !images.grad().defined()) {
    std::cerr << "consumer: unexpected loss " << value << "\n";
    return 1;
  }
  // ihn::eval's METEOR stems with libstemmer: this links only if the package carries it.
  ihn::eval::MeteorOptions meteor;
  meteor.synonyms = false;  // no WordNet files needed
  const auto stats = ihn::eval::MeteorScorer(meteor).align("small effusions", "small effusion");
  if (stats.test_content_matches[1] != 1) {
    std::cerr << "consumer: METEOR found no stem match between effusions and effusion\n";
    return 1;
  }
  std::cout << "ihn " << ihn::version_string << " found through find_package; loss " << value
            << "\n";
  return 0;
}
