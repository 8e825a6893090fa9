// What R2Gen and R2GenCMN compute the same way around their own encoder-decoders: the views
// through the visual extractor, one teacher-forced pass with the features the hard-negative
// library needs, and decoding through an incremental decoder. A port's model holds
// `visual_extractor` and `encoder_decoder` (with encode(), forward() and make_decoder()) and
// forwards its methods here, so each of these is written once.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <tuple>

#include "decoding.hpp"
#include "multiview.hpp"
#include "training.hpp"

namespace ihn_toolkit::nn {

/// One teacher-forced pass from the visual extractor's output (att_feats (B, N, C), fc_feats
/// (B, views*C)), e.g. features computed once for a frozen extractor: visual tokens, the
/// encoder-decoder's intermediates and log-probs, image features (mean of the encoder output over
/// the visual tokens) and report features (masked mean of the final decoder states).
template <class Output, class Model>
Output generator_forward_features(Model& model, torch::Tensor att_feats, torch::Tensor fc_feats,
                                  const torch::Tensor& reports_ids,
                                  const torch::Tensor& reports_masks) {
  Output out;
  out.att_feats = std::move(att_feats);
  out.fc_feats = std::move(fc_feats);
  out.details = model.encoder_decoder->forward(out.att_feats, reports_ids);
  out.logprobs = out.details.logprobs;
  out.image_features = out.details.encoder_out.mean(1);
  out.report_features =
      masked_mean(out.details.decoder_out, decoder_input_mask(reports_ids, reports_masks));
  return out;
}

/// The teacher-forced pass from images: the views through the visual extractor first.
template <class Output, class Model>
Output generator_forward(Model& model, const torch::Tensor& images,
                         const torch::Tensor& reports_ids, const torch::Tensor& reports_masks) {
  auto [att_feats, fc_feats] = model.visual_features(images);
  return generator_forward_features<Output>(model, std::move(att_feats), std::move(fc_feats),
                                            reports_ids, reports_masks);
}

/// The image features alone (no decoder pass).
template <class Model>
torch::Tensor generator_image_features(Model& model, const torch::Tensor& images) {
  return model.encoder_decoder->encode(model.visual_features(images).first).second.mean(1);
}

/// An incremental decoder over the encoded images.
template <class Model>
std::unique_ptr<IncrementalDecoder> generator_decoder(Model& model, const torch::Tensor& images) {
  auto encoder_out = model.encoder_decoder->encode(model.visual_features(images).first).second;
  return model.encoder_decoder->make_decoder(encoder_out);
}

template <class Model>
GreedyResult generator_greedy(Model& model, const torch::Tensor& images,
                              const GreedyOptions& options) {
  torch::NoGradGuard no_grad;
  auto decoder = generator_decoder(model, images);
  return greedy_decode(*decoder, images.size(0), options, images.device());
}

template <class Model>
BeamSearchResult generator_beam_search(Model& model, const torch::Tensor& images,
                                       const BeamSearchOptions& options) {
  torch::NoGradGuard no_grad;
  auto decoder = generator_decoder(model, images);
  return beam_search(*decoder, images.size(0), options, images.device());
}

}  // namespace ihn_toolkit::nn
