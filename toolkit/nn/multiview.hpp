// Several X-ray views of one study through one visual extractor, as both ports' official
// forward_iu_xray does: every view separately (so BatchNorm batch statistics in training mode are
// per view), patch tokens and averages concatenated. A 4-d input is a single view (MIMIC-CXR).
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>

#include "resnet.hpp"

namespace ihn_toolkit::nn {

/// images (B, views, 3, H, W) or (B, 3, H, W) -> (att_feats (B, views*h*w, C),
/// fc_feats (B, views*C)). `who` prefixes the error message for a bad shape.
std::pair<torch::Tensor, torch::Tensor> multiview_features(VisualExtractorImpl& extractor,
                                                           const torch::Tensor& images,
                                                           const std::string& who);

}  // namespace ihn_toolkit::nn
