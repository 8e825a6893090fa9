// A torchvision-structured ResNet without its average pool and classifier, and the visual
// extractor R2Gen and R2GenCMN build from it. The official code wraps
// `nn.Sequential(*list(resnet.children())[:-2])` as `visual_extractor.model`, so parameters are
// named `model.0.weight` (conv1), `model.1.*` (bn1), `model.4.0.conv1.weight` (layer1, block 0),
// ..., `model.7.*` (layer4); the blocks keep torchvision's names (conv1, bn1, ..., downsample.0/1).
// Depth 18/34 use BasicBlock, 50/101/152 Bottleneck (stride on the 3x3 conv, torchvision >= 0.5),
// so a small CPU backbone can stand in for ResNet-101 with the same code.
#pragma once

#include <torch/torch.h>

namespace ihn_toolkit::nn {

struct ResNetBlockImpl : torch::nn::Module {
  /// bottleneck: conv1 1x1 -> conv2 3x3 (stride) -> conv3 1x1 (x4); basic: conv1 3x3 (stride) ->
  /// conv2 3x3. downsample = Sequential(conv 1x1 stride, bn) when shape changes.
  ResNetBlockImpl(bool bottleneck, int64_t in_planes, int64_t planes, int64_t stride);
  torch::Tensor forward(const torch::Tensor& x);

  bool bottleneck;
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr}, bn3{nullptr};
  torch::nn::Sequential downsample{nullptr};
};
TORCH_MODULE(ResNetBlock);

/// One stage (layer1..4) of blocks. A Sequential subclass with a concrete forward, because a
/// plain Sequential cannot be nested in another Sequential.
struct ResNetStageImpl : torch::nn::SequentialImpl {
  using SequentialImpl::SequentialImpl;
  torch::Tensor forward(torch::Tensor x) { return SequentialImpl::forward(std::move(x)); }
};
TORCH_MODULE(ResNetStage);

/// conv1, bn1, relu, maxpool, layer1..4 as a Sequential (children "0".."7").
torch::nn::Sequential make_resnet_trunk(int64_t depth);
/// Channels of the trunk's output: 512 (18/34) or 2048 (50/101/152).
int64_t resnet_out_channels(int64_t depth);

struct VisualExtractorOptions {
  /// 101 in the papers; 18 for the small CPU configuration.
  TORCH_ARG(int64_t, depth) = 101;
};

struct VisualFeatures {
  torch::Tensor patch;  ///< (B, H*W, C): the conv5 map as tokens
  torch::Tensor avg;    ///< (B, C): its global average (official AvgPool2d(7) at 224x224)
};

struct VisualExtractorImpl : torch::nn::Module {
  explicit VisualExtractorImpl(const VisualExtractorOptions& options = {});
  /// images (B, 3, H, W).
  VisualFeatures forward(const torch::Tensor& images);

  VisualExtractorOptions options;
  torch::nn::Sequential model;
};
TORCH_MODULE(VisualExtractor);

/// Stores every 4-D parameter of `module` (the convolution weights) channels-last (NHWC).
/// VisualExtractor feeds its input in the layout of its first convolution's weight, so after
/// this call the ResNet runs channels-last end to end: oneDNN convolutions without a layout
/// reorder of every activation, and the channels-last batch-norm / ReLU / pooling kernels. The
/// values are unchanged; call it before the optimizer first steps (its state follows the
/// parameters' layout) and after loading weights if the loader replaces tensors.
void to_channels_last(torch::nn::Module& module);

}  // namespace ihn_toolkit::nn
