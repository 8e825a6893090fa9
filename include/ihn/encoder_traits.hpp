// The customisation point that tells ihn where a model's image and report features are.
//
// ihn never modifies a user's model. It asks `ihn::encoder_traits<Model>` for two B x D
// tensors: image features and report features in one space. The primary template uses the
// model's own members when they exist, called as `model.image_features(batch)` or, for
// LibTorch module holders, `model->image_features(batch)`. Otherwise specialise it:
//
//   template <> struct ihn::encoder_traits<MyModel> {
//     template <class Batch> static at::Tensor image_features(MyModel& m, const Batch& b);
//     template <class Batch> static at::Tensor report_features(MyModel& m, const Batch& b);
//   };
#pragma once

#include <torch/types.h>

#include <type_traits>
#include <utility>

namespace ihn {
inline namespace v0 {
namespace detail {

template <class...>
inline constexpr bool always_false = false;

template <class M, class B, class = void>
struct has_member_image_features : std::false_type {};
template <class M, class B>
struct has_member_image_features<
    M, B, std::void_t<decltype(std::declval<M&>().image_features(std::declval<const B&>()))>>
    : std::true_type {};

template <class M, class B, class = void>
struct has_arrow_image_features : std::false_type {};
template <class M, class B>
struct has_arrow_image_features<
    M, B, std::void_t<decltype(std::declval<M&>()->image_features(std::declval<const B&>()))>>
    : std::true_type {};

template <class M, class B, class = void>
struct has_member_report_features : std::false_type {};
template <class M, class B>
struct has_member_report_features<
    M, B, std::void_t<decltype(std::declval<M&>().report_features(std::declval<const B&>()))>>
    : std::true_type {};

template <class M, class B, class = void>
struct has_arrow_report_features : std::false_type {};
template <class M, class B>
struct has_arrow_report_features<
    M, B, std::void_t<decltype(std::declval<M&>()->report_features(std::declval<const B&>()))>>
    : std::true_type {};

}  // namespace detail

/// Default: forward to the model's `image_features` / `report_features` members.
template <class Model>
struct encoder_traits {
  template <class Batch>
  static at::Tensor image_features(Model& model, const Batch& batch) {
    if constexpr (detail::has_member_image_features<Model, Batch>::value) {
      return model.image_features(batch);
    } else if constexpr (detail::has_arrow_image_features<Model, Batch>::value) {
      return model->image_features(batch);
    } else {
      static_assert(detail::always_false<Model, Batch>,
                    "ihn::encoder_traits<Model>: Model has no image_features(const Batch&) "
                    "member. Add one, or specialise ihn::encoder_traits<Model> "
                    "(see <ihn/encoder_traits.hpp>).");
      return {};
    }
  }

  template <class Batch>
  static at::Tensor report_features(Model& model, const Batch& batch) {
    if constexpr (detail::has_member_report_features<Model, Batch>::value) {
      return model.report_features(batch);
    } else if constexpr (detail::has_arrow_report_features<Model, Batch>::value) {
      return model->report_features(batch);
    } else {
      static_assert(detail::always_false<Model, Batch>,
                    "ihn::encoder_traits<Model>: Model has no report_features(const Batch&) "
                    "member. Add one, or specialise ihn::encoder_traits<Model> "
                    "(see <ihn/encoder_traits.hpp>).");
      return {};
    }
  }
};

/// True when encoder_traits<Model> can produce features from a `Batch` (for static checks).
template <class Model, class Batch>
inline constexpr bool has_encoder_features_v =
    (detail::has_member_image_features<Model, Batch>::value ||
     detail::has_arrow_image_features<Model, Batch>::value) &&
    (detail::has_member_report_features<Model, Batch>::value ||
     detail::has_arrow_report_features<Model, Batch>::value);

}  // namespace v0
}  // namespace ihn
