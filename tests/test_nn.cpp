// The blocks under toolkit/nn that both ports stand on, and the library's checkpoint
// reader: ihn::io (.pth files written by Python's torch.save, mismatches, the unpickler), the
// channels-last ResNet, the attention's broadcast path, Linear through oneDNN, the hashed
// dropout, and the optimiser (clear_grads, FusedAdam).
#include "fixture_checks.hpp"  // load_pt, max_abs_diff

#include <ihn/io/pth.hpp>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>

#include "nn/dropout.hpp"
#include "nn/fused_adam.hpp"
#include "nn/linear.hpp"
#include "nn/precision.hpp"
#include "nn/resnet.hpp"
#include "nn/training.hpp"
#include "nn/transformer.hpp"

namespace enn = ihn_toolkit::nn;
using ihn_test::load_pt;
using ihn_test::max_abs_diff;

// ---------------------------------------------------------------------------------------------
// ihn::io: .pth checkpoints

namespace {

/// A module with what checkpoints hold: Linear, BatchNorm (with its int64 counter), a nested
/// Sequential, a buffer, a double parameter and a non-contiguous (transposed) buffer.
struct PthProbeImpl : torch::nn::Module {
  explicit PthProbeImpl(int64_t out = 5)
      : fc(register_module("fc", torch::nn::Linear(4, 3))),
        bn(register_module("bn", torch::nn::BatchNorm1d(3))),
        seq(register_module("seq", torch::nn::Sequential(torch::nn::Linear(3, 2), torch::nn::ReLU(),
                                                         torch::nn::Linear(2, out)))),
        pe(register_buffer("pe", torch::zeros({1, 3, 4}))),
        scale(register_parameter("scale", torch::zeros({2}, torch::kDouble))),
        tr(register_buffer("tr", torch::zeros({3, 2}))) {}
  torch::nn::Linear fc;
  torch::nn::BatchNorm1d bn;
  torch::nn::Sequential seq;
  torch::Tensor pe, scale, tr;
};
TORCH_MODULE(PthProbe);

const char* kMakeCheckpoints = R"PY(
import collections, sys, torch, torch.nn as nn
out = sys.argv[1]
torch.manual_seed(1234)
class Probe(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)
        self.seq = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 5))
        self.register_buffer('pe', torch.randn(1, 3, 4))
        self.scale = nn.Parameter(torch.randn(2, dtype=torch.float64))
        self.register_buffer('tr', torch.randn(2, 3).t())   # a non-contiguous view
m = Probe()
m.train()
opt = torch.optim.Adam(m.parameters(), lr=1e-3, amsgrad=True)
for _ in range(2):   # moves BN statistics and fills the optimiser state with tensors
    loss = m.seq(m.bn(m.fc(torch.randn(8, 4)))).pow(2).sum() + m.scale.sum()
    opt.zero_grad(); loss.backward(); opt.step()
sd = m.state_dict()
assert isinstance(sd, collections.OrderedDict) and not sd['tr'].is_contiguous()
ckpt = {'epoch': 7, 'state_dict': sd, 'optimizer': opt.state_dict(), 'monitor_best': 0.125}
torch.save(ckpt, out + '/zip.pth')
torch.save(ckpt, out + '/legacy.pth', _use_new_zipfile_serialization=False)
torch.save({'state_dict': collections.OrderedDict(('module.' + k, v) for k, v in sd.items())},
           out + '/dataparallel.pth')
torch.save({k: v.clone().contiguous() for k, v in sd.items()}, out + '/expected.pt')
)PY";

void check_probe_equals(PthProbe& probe, const c10::Dict<c10::IValue, c10::IValue>& expected) {
  size_t n = 0;
  for (const auto& p : probe->named_parameters()) {
    INFO(p.key());
    CHECK(torch::equal(p.value(), expected.at(p.key()).toTensor()));
    ++n;
  }
  for (const auto& b : probe->named_buffers()) {
    INFO(b.key());
    CHECK(torch::equal(b.value(), expected.at(b.key()).toTensor()));
    ++n;
  }
  CHECK(n == expected.size());
}

}  // namespace

TEST_CASE("io: checkpoints written by Python torch.save load by name, zip and legacy", "[io]") {
  if (!ihn_test::python_available("torch")) return;
  auto dir = ihn_test::scratch_dir("pth");
  { std::ofstream(dir / "make.py") << kMakeCheckpoints; }
  const auto cmd = ihn_test::python() + " " + (dir / "make.py").string() + " " + dir.string();
  REQUIRE(std::system(cmd.c_str()) == 0);
  auto expected = load_pt(dir / "expected.pt");
  for (const char* file : {"zip.pth", "legacy.pth", "dataparallel.pth"}) {
    INFO(file);
    PthProbe probe;
    auto report = ihn::io::load_pth(*probe, (dir / file).string());
    CHECK(report.ok());
    CHECK(report.loaded == expected.size());
    check_probe_equals(probe, expected);
  }
  // The other entries of the official checkpoint layout.
  for (const char* file : {"zip.pth", "legacy.pth"}) {
    INFO(file);
    auto ckpt = ihn::io::read_pth((dir / file).string());
    CHECK(ckpt->at("epoch").as_int() == 7);
    CHECK(ckpt->at("monitor_best").as_double() == 0.125);
    const auto& opt = ckpt->at("optimizer");
    REQUIRE(opt.contains("state"));
    REQUIRE(opt.contains("param_groups"));
    // Adam (amsgrad) state per parameter: step, exp_avg, exp_avg_sq, max_exp_avg_sq.
    CHECK(opt.at("state").entries.size() == PthProbe()->parameters().size());
  }
}

TEST_CASE("io: mismatches are reported by name; strict mode throws", "[io]") {
  // Written by LibTorch itself (torch::pickle_save, the zip format torch.load reads), so this
  // runs without Python too.
  auto dir = ihn_test::scratch_dir("pth_mismatch");
  torch::manual_seed(3);
  PthProbe source;
  c10::Dict<std::string, torch::Tensor> dict;
  for (const auto& p : source->named_parameters()) dict.insert(p.key(), p.value().detach());
  for (const auto& b : source->named_buffers()) dict.insert(b.key(), b.value());
  dict.insert("extra.weight", torch::ones({2}));
  REQUIRE(dict.erase("pe") == 1);
  {
    auto bytes = torch::pickle_save(dict);
    std::ofstream(dir / "ckpt.pth", std::ios::binary).write(bytes.data(), bytes.size());
  }
  const auto path = (dir / "ckpt.pth").string();
  PthProbe wrong_shape(/*out=*/6);  // seq.2 is (6, 2) here, (5, 2) in the file
  try {
    ihn::io::load_pth(*wrong_shape, path);
    FAIL("strict load did not throw");
  } catch (const ihn::io::pth_error& e) {
    const std::string what = e.what();
    CHECK(what.find("seq.2.weight") != std::string::npos);
    CHECK(what.find("extra.weight") != std::string::npos);
    CHECK(what.find("pe") != std::string::npos);
    CHECK(what.find(path) != std::string::npos);
  }
  auto report = ihn::io::load_pth(*wrong_shape, path, ihn::io::LoadOptions().strict(false));
  CHECK(report.missing == std::vector<std::string>{"pe"});
  CHECK(report.unexpected == std::vector<std::string>{"extra.weight"});
  REQUIRE(report.mismatched.size() == 2);  // seq.2.weight and seq.2.bias
  CHECK(report.mismatched[0].found == std::vector<int64_t>{5, 2});
  // Everything else was copied, values included.
  CHECK(torch::equal(wrong_shape->fc->weight, source->fc->weight));
  CHECK(torch::equal(wrong_shape->bn->running_var, source->bn->running_var));
  CHECK(torch::equal(wrong_shape->scale, source->scale));
  CHECK(wrong_shape->pe.abs().sum().item<double>() == 0);  // missing: left as constructed
  CHECK_THROWS_AS(ihn::io::read_pth((dir / "missing.pth").string()), ihn::io::pth_error);
}

TEST_CASE("io: the unpickler reads an OrderedDict with BUILD state and memo references", "[io]") {
  // protocol 2: {'epoch': 3, 'sd': OrderedDict([('a', 1.5), ('b', [True, None])]), 'again': <memo>}
  const unsigned char bytes[] = {
      128, 2,   125, 113, 0,   40,  88,  5,   0,   0,   0,   101, 112, 111, 99,  104, 113,
      1,   75,  3,   88,  2,   0,   0,   0,   115, 100, 113, 2,   99,  99,  111, 108, 108,
      101, 99,  116, 105, 111, 110, 115, 10,  79,  114, 100, 101, 114, 101, 100, 68,  105,
      99,  116, 10,  113, 3,   41,  82,  113, 4,   40,  88,  1,   0,   0,   0,   97,  113,
      5,   71,  63,  248, 0,   0,   0,   0,   0,   0,   88,  1,   0,   0,   0,   98,  113,
      6,   93,  113, 7,   40,  136, 78,  101, 117, 125, 113, 8,   88,  9,   0,   0,   0,
      95,  109, 101, 116, 97,  100, 97,  116, 97,  113, 9,   125, 113, 10,  115, 98,  88,
      5,   0,   0,   0,   97,  103, 97,  105, 110, 113, 11,  104, 4,   117, 46};
  const std::string p(reinterpret_cast<const char*>(bytes), sizeof(bytes));
  ihn::io::detail::Unpickler u(p.data(), p.size(),
                               [](const ihn::io::PyObjectPtr&) -> ihn::io::PyObjectPtr {
                                 throw ihn::io::pth_error("no storages here");
                               });
  size_t pos = 0;
  auto root = u.load(pos);
  CHECK(pos == p.size());
  CHECK(root->at("epoch").as_int() == 3);
  const auto& sd = root->at("sd");
  REQUIRE(sd.entries.size() == 2);
  CHECK(sd.at("a").as_double() == 1.5);
  REQUIRE(sd.at("b").items.size() == 2);
  CHECK(sd.at("b").items[0]->boolean);
  CHECK(&root->at("again") == &sd);  // BINGET returns the same object
  std::string truncated = p.substr(0, p.size() - 5);
  size_t pos2 = 0;
  ihn::io::detail::Unpickler u2(truncated.data(), truncated.size(), nullptr);
  CHECK_THROWS_AS(u2.load(pos2), ihn::io::pth_error);
}

// ---------------------------------------------------------------------------------------------
// Blocks: ResNet, attention, Linear, dropout

TEST_CASE("visual extractor: channels-last weights give the same features and gradients", "[nn]") {
  // nn::to_channels_last only changes the layout, and the in-place ReLU / residual add must keep
  // autograd valid: train mode (batch statistics), forward and backward against a plain copy.
  // Tolerances: the two layouts run different oneDNN kernels (other summation orders) in
  // float32 through 8 blocks of conv + batch norm; features up to ~5 agree to 1e-4 absolute,
  // and every gradient to 1e-3 of its norm (batch-norm backward amplifies the rounding).
  torch::manual_seed(5);
  enn::VisualExtractor plain(enn::VisualExtractorOptions().depth(18));
  enn::VisualExtractor nhwc(enn::VisualExtractorOptions().depth(18));
  {
    torch::NoGradGuard no_grad;
    auto src = plain->named_parameters();
    for (auto& p : nhwc->named_parameters()) p.value().copy_(src[p.key()]);
    auto src_buffers = plain->named_buffers();
    for (auto& b : nhwc->named_buffers()) b.value().copy_(src_buffers[b.key()]);
  }
  enn::to_channels_last(*nhwc);
  const auto& w = nhwc->named_parameters()["model.0.weight"];
  REQUIRE(w.is_contiguous(at::MemoryFormat::ChannelsLast));
  REQUIRE_FALSE(w.is_contiguous());
  plain->train();
  nhwc->train();
  auto images = torch::randn({4, 2, 3, 64, 64}).select(1, 1);  // a view, as R2Gen passes
  auto a = plain(images), b = nhwc(images);
  CHECK(b.patch.sizes() == a.patch.sizes());
  CHECK(torch::allclose(b.patch, a.patch, 1e-4, 1e-4));
  CHECK(torch::allclose(b.avg, a.avg, 1e-4, 1e-4));
  CHECK(a.patch.abs().max().item<double>() > 0.1);  // not a degenerate all-zero map
  auto weights = torch::randn(a.patch.sizes());
  ((a.patch * weights).sum() + a.avg.pow(2).sum()).backward();
  ((b.patch * weights).sum() + b.avg.pow(2).sum()).backward();
  auto grads = plain->named_parameters();
  int64_t compared = 0;
  for (auto& p : nhwc->named_parameters()) {
    const auto& ref = grads[p.key()].grad();
    REQUIRE(ref.defined());
    REQUIRE(p.value().grad().defined());
    const double scale = ref.norm().item<double>();
    REQUIRE(scale > 0);
    INFO(p.key());
    CHECK((p.value().grad() - ref).norm().item<double>() <= 1e-3 * scale);
    ++compared;
  }
  CHECK(compared == 60);  // 20 convolutions, 20 batch norms (weight and bias)
  // Running statistics advance identically.
  auto buffers = plain->named_buffers();
  for (auto& b2 : nhwc->named_buffers()) {
    INFO(b2.key());
    CHECK(torch::allclose(b2.value().to(torch::kDouble), buffers[b2.key()].to(torch::kDouble), 1e-4,
                          1e-5));
  }
}

TEST_CASE("attention: few query-key pairs use a broadcast product equal to bmm", "[nn]") {
  // The relational memory's 3 x 4 heads and a decoding step's 1 x T take the broadcast path
  // (Lq * Lk <= kFewPairs); it must give bmm's values and gradients up to float32 rounding of
  // the d_k-term sums (d_k 16 here: a few ulps of O(1) values, so 1e-6).
  torch::manual_seed(11);
  enn::MultiHeadedAttention mha(enn::MultiHeadedAttentionOptions(4, 64).dropout(0.0));
  for (const auto& [lq, lk] : std::vector<std::pair<int64_t, int64_t>>{{3, 4}, {1, 60}, {8, 8}}) {
    INFO("Lq " << lq << " Lk " << lk);
    REQUIRE(lq * lk <= enn::MultiHeadedAttentionImpl::kFewPairs);
    auto q = torch::randn({2, 4, lq, 16}, torch::requires_grad());
    auto k = torch::randn({2, 4, lk, 16}, torch::requires_grad());
    auto v = torch::randn({2, 4, lk, 16}, torch::requires_grad());
    auto mask = torch::rand({2, lq, lk}) > 0.3;
    mask.select(2, 0).fill_(true);  // every query sees a key
    for (const bool masked : {false, true}) {
      auto out = mha->attend(q, k, v, masked ? mask : torch::Tensor());
      auto scores = torch::matmul(q, k.transpose(-2, -1)) / 4.0;
      if (masked) scores = scores.masked_fill(mask.unsqueeze(1).logical_not(), -1e9);
      auto ref = torch::matmul(torch::softmax(scores, -1), v);
      CHECK(max_abs_diff(out, ref) < 1e-6);
      auto w = torch::randn(ref.sizes());
      auto g = torch::autograd::grad({(out * w).sum()}, {q, k, v});
      auto g_ref = torch::autograd::grad({(ref * w).sum()}, {q, k, v});
      for (size_t i = 0; i < g.size(); ++i) CHECK(max_abs_diff(g[i], g_ref[i]) < 1e-6);
    }
  }
}

TEST_CASE("linear: oneDNN's sgemm path equals at::linear, values and gradients", "[nn]") {
#if IHN_EXPECT_DNNL
  REQUIRE(enn::linear_uses_dnnl());  // the build found oneDNN: the fast path must be in use
#endif
  // Sums of K products of O(1) values: float32 rounding of different summation orders is a few
  // ulps times sqrt(K) (K <= 300 here), far below 1e-4 on results of size ~sqrt(K).
  torch::manual_seed(5);
  struct Case {
    std::vector<int64_t> x_sizes;
    int64_t out;
    bool bias, transposed_input;
  };
  for (const auto& c : std::vector<Case>{{{7, 33}, 20, true, false},
                                         {{2, 59, 64}, 96, true, false},
                                         {{3, 5, 300}, 17, false, false},
                                         {{4, 6, 48}, 48, true, true},
                                         {{48}, 12, true, false}}) {
    INFO("x " << c10::IntArrayRef(c.x_sizes) << " out " << c.out << " bias " << c.bias);
    auto x = torch::randn(c.x_sizes);
    if (c.transposed_input) x = x.transpose(0, 1).contiguous().transpose(0, 1);  // strided
    x.requires_grad_(true);
    auto w = torch::randn({c.out, c.x_sizes.back()}, torch::requires_grad());
    auto b = c.bias ? torch::randn({c.out}, torch::requires_grad()) : torch::Tensor();
    auto y = enn::linear(x, w, b);
    auto ref = torch::nn::functional::linear(x, w, b);
    REQUIRE(y.sizes() == ref.sizes());
    CHECK(max_abs_diff(y, ref) < 1e-4);
    auto up = torch::randn(ref.sizes());
    std::vector<torch::Tensor> inputs{x, w};
    if (c.bias) inputs.push_back(b);
    auto g = torch::autograd::grad({(y * up).sum()}, inputs);
    auto g_ref = torch::autograd::grad({(ref * up).sum()}, inputs);
    for (size_t i = 0; i < g.size(); ++i) {
      INFO("gradient " << i);
      REQUIRE(g[i].sizes() == g_ref[i].sizes());
      // Sums of up to 300 products of O(1) values, results of size ~10-20: 1e-3 is ~1e-4 of them.
      CHECK(max_abs_diff(g[i], g_ref[i]) < 1e-3);
    }
  }
  {  // Inference (no_grad) is LibTorch's own product, bit for bit.
    torch::NoGradGuard no_grad;
    auto x = torch::randn({6, 40}), w = torch::randn({24, 40}), b = torch::randn({24});
    CHECK(torch::equal(enn::linear(x, w, b), torch::nn::functional::linear(x, w, b)));
  }
  // Only the inputs that need a gradient get one; a frozen weight is left alone.
  auto x = torch::randn({5, 8}, torch::requires_grad());
  auto w = torch::randn({3, 8});
  auto gx = torch::autograd::grad({enn::linear(x, w, torch::zeros({3})).sum()}, {x})[0];
  CHECK(max_abs_diff(gx, w.sum(0).expand({5, 8})) < 1e-5);
  // SharedWeightLinear through a 4-step recurrence: the weight's and bias's gradients (one
  // product over all steps) and the state's equal per-step Linear layers'; a second backward
  // over the retained graph gives them again; without grad mode it is a plain product.
  {
    auto weight = torch::randn({8, 8}, torch::requires_grad());
    auto bias = torch::randn({8}, torch::requires_grad());
    auto h0 = torch::randn({3, 8}, torch::requires_grad());
    auto run = [&](bool shared) {
      const enn::SharedWeightLinear layer(weight, bias);
      auto h = h0;
      for (int t = 0; t < 4; ++t)
        h = torch::tanh(shared ? layer(h) : torch::nn::functional::linear(h, weight, bias));
      return h.pow(2).sum();
    };
    auto loss = run(true);
    auto g = torch::autograd::grad({loss}, {weight, bias, h0}, {}, /*retain_graph=*/true);
    // A backward that wants only the state's gradient leaves nothing behind for the next one.
    torch::autograd::grad({loss}, {h0}, {}, /*retain_graph=*/true);
    auto again = torch::autograd::grad({loss}, {weight, bias, h0});
    auto ref = torch::autograd::grad({run(false)}, {weight, bias, h0});
    for (size_t i = 0; i < 3; ++i) {
      INFO("shared-weight gradient " << i);
      CHECK(max_abs_diff(g[i], ref[i]) < 1e-5);
      CHECK(max_abs_diff(again[i], g[i]) == 0);
    }
    torch::NoGradGuard no_grad;
    CHECK(torch::equal(enn::SharedWeightLinear(weight, bias)(h0),
                       torch::nn::functional::linear(h0, weight, bias)));
  }
  // The module is torch::nn::Linear's: same names, same initialisation from the same seed.
  torch::manual_seed(3);
  enn::Linear mine(16, 4);
  torch::manual_seed(3);
  torch::nn::Linear theirs(16, 4);
  CHECK(torch::equal(mine->weight, theirs->weight));
  CHECK(torch::equal(mine->bias, theirs->bias));
  CHECK(mine->named_parameters().keys() == theirs->named_parameters().keys());
}

TEST_CASE("dropout: hashed CPU masks drop at rate p, scale, and backward reuses the mask", "[nn]") {
  torch::manual_seed(21);
  const int64_t n = 1 << 20;
  for (const double p : {0.1, 0.5}) {
    INFO("p " << p);
    auto x = (torch::rand({n}) + 0.5).requires_grad_(true);  // no zeros of its own
    auto y = enn::dropout(x, p, true);
    const auto kept = y.ne(0);
    // Each element is an independent draw: the dropped share is within 5 standard deviations of
    // p (sd = sqrt(p (1-p) / n) <= 5e-4), and so is the share of kept pairs at a distance of
    // 1, 59 (a report's positions), 256 (a d_model row) and 4096 of (1-p)².
    const double dropped = 1.0 - kept.to(torch::kDouble).mean().item<double>();
    CHECK(std::abs(dropped - p) < 5 * std::sqrt(p * (1 - p) / n));
    const double q = (1 - p) * (1 - p);
    for (const int64_t lag : {1, 59, 256, 4096}) {
      INFO("lag " << lag);
      const double pairs = (kept.narrow(0, 0, n - lag) & kept.narrow(0, lag, n - lag))
                               .to(torch::kDouble)
                               .mean()
                               .item<double>();
      CHECK(std::abs(pairs - q) < 5 * std::sqrt(q * (1 - q) / static_cast<double>(n - lag)));
    }
    // Kept elements are scaled as torch::dropout scales them.
    const auto scale = static_cast<float>(1.0 / (1.0 - p));
    CHECK(torch::equal(y.masked_select(kept), x.detach().masked_select(kept) * scale));
    // Backward: the upstream gradient through the same mask and scale.
    auto up = torch::randn({n});
    auto g = torch::autograd::grad({(y * up).sum()}, {x})[0];
    CHECK(torch::equal(g, torch::where(kept, up * scale, torch::zeros({n}))));
    // The next call draws a new mask.
    CHECK_FALSE(torch::equal(enn::dropout(x, p, true).ne(0), kept));
  }
  // The mask is a function of the seed alone, whatever the thread count.
  const auto threads = torch::get_num_threads();
  torch::set_num_threads(1);
  const auto one = enn::dropout_mask(12345, 300000, 0.1);
  torch::set_num_threads(2);
  const auto two = enn::dropout_mask(12345, 300000, 0.1);
  torch::set_num_threads(threads);
  CHECK(torch::equal(one, two));
  CHECK_FALSE(torch::equal(one, enn::dropout_mask(12346, 300000, 0.1)));
  // Eval mode and p = 0 return the input; other dtypes take torch::dropout.
  auto x = torch::randn({64});
  CHECK(enn::dropout(x, 0.1, false).is_same(x));
  CHECK(enn::dropout(x, 0.0, true).is_same(x));
  const auto d = enn::dropout(x.to(torch::kDouble), 0.5, true);
  CHECK(d.scalar_type() == torch::kDouble);
  CHECK(d.ne(0).sum().item<int64_t>() < 64);
}
// ---------------------------------------------------------------------------------------------
// Optimiser

TEST_CASE("training: clear_grads then backward gives zero_grad's Adam step exactly", "[optim]") {
  // Gradients set to none instead of zeroed: backward's first gradient becomes the .grad, and
  // 0 + g == g, so the step must be bit-identical.
  torch::manual_seed(13);
  auto make = [] {
    torch::manual_seed(14);
    return torch::nn::Linear(8, 4);
  };
  auto a = make(), b = make();
  torch::optim::Adam opt_a(a->parameters(), torch::optim::AdamOptions(1e-2).amsgrad(true));
  torch::optim::Adam opt_b(b->parameters(), torch::optim::AdamOptions(1e-2).amsgrad(true));
  for (int step = 0; step < 3; ++step) {
    auto x = torch::randn({5, 8});
    opt_a.zero_grad();
    a(x).pow(2).sum().backward();
    opt_a.step();
    enn::clear_grads(opt_b);
    for (const auto& p : b->parameters()) REQUIRE_FALSE(p.grad().defined());
    b(x).pow(2).sum().backward();
    opt_b.step();
  }
  for (size_t i = 0; i < a->parameters().size(); ++i)
    CHECK(torch::equal(a->parameters()[i], b->parameters()[i]));
}

TEST_CASE("training: FusedAdam steps as torch::optim::Adam and shares its state", "[optim]") {
  // Two parameter groups (R2Gen's lr_ve / lr_ed), weight decay, amsgrad on and off, a
  // channels-last 4-d weight (the ResNet's) and a parameter whose gradient is missing in one
  // step. The fused loop does the same float operations as ATen's kernels except that ATen
  // fuses two multiply-adds, so values agree to a few float32 ulps of the parameter (rtol 1e-6)
  // after five steps; an error in any coefficient would be far larger (lr 1e-2 moves 1e-2).
  for (const bool amsgrad : {true, false}) {
    INFO("amsgrad " << amsgrad);
    torch::manual_seed(15);
    auto conv = torch::randn({8, 4, 3, 3}).contiguous(at::MemoryFormat::ChannelsLast);
    auto weight = torch::randn({16, 128}), bias = torch::randn({16}), unused = torch::randn({4});
    std::vector<torch::Tensor> a = {conv, weight, bias, unused}, b;
    for (auto& t : a) {
      t.set_requires_grad(true);
      b.push_back(t.detach().clone(at::MemoryFormat::Preserve).set_requires_grad(true));
    }
    REQUIRE(b[0].is_contiguous(at::MemoryFormat::ChannelsLast));
    std::vector<torch::Tensor> initial;
    for (auto& t : b) initial.push_back(t.detach().clone());
    auto options = [&](double lr) {
      return torch::optim::AdamOptions(lr).weight_decay(5e-5).amsgrad(amsgrad);
    };
    auto groups = [&](std::vector<torch::Tensor>& p) {
      std::vector<torch::optim::OptimizerParamGroup> g;
      g.emplace_back(std::vector<torch::Tensor>{p[0]},
                     std::make_unique<torch::optim::AdamOptions>(options(5e-3)));
      g.emplace_back(std::vector<torch::Tensor>{p[1], p[2], p[3]},
                     std::make_unique<torch::optim::AdamOptions>(options(1e-2)));
      return g;
    };
    torch::optim::Adam reference(groups(a), options(1e-2));
    enn::FusedAdam fused(groups(b), options(1e-2));
    auto loss = [](const std::vector<torch::Tensor>& p, const torch::Tensor& x, bool use_last) {
      auto y = torch::conv2d(x, p[0]).flatten(1).matmul(p[1].t()) + p[2];
      auto l = y.pow(2).mean();
      return use_last ? l + p[3].sum() : l;
    };
    for (int step = 0; step < 5; ++step) {
      auto x = torch::randn({2, 4, 6, 6});
      const bool use_last = step != 2;  // step 3: no gradient for `unused`, both skip it
      reference.zero_grad();
      enn::clear_grads(fused);
      loss(a, x, use_last).backward();
      loss(b, x, use_last).backward();
      if (!use_last) a[3].mutable_grad().reset();
      reference.step();
      fused.step();
    }
    for (size_t i = 0; i < a.size(); ++i) {
      INFO("parameter " << i);
      CHECK(torch::allclose(b[i], a[i], 1e-6, 1e-7));
      CHECK((b[i] - initial[i]).abs().max().item<double>() > 1e-3);  // it did train
    }
    CHECK(b[0].is_contiguous(at::MemoryFormat::ChannelsLast));
    // The state is Adam's: saved from FusedAdam, it loads into torch::optim::Adam.
    std::stringstream buffer;
    torch::save(fused, buffer);
    torch::optim::Adam reloaded(groups(b), options(1e-2));
    torch::load(reloaded, buffer);
    const auto& s = static_cast<torch::optim::AdamParamState&>(*reloaded.state().begin()->second);
    CHECK(s.step() >= 4);
  }
}

// ---------------------------------------------------------------------------------------------
// Mixed precision (nn/precision.hpp)

TEST_CASE("precision: autocast runs products in bf16 inside the guard only, and nests",
          "[precision]") {
  namespace nn = ihn_toolkit::nn;
  auto a = torch::randn({8, 16}), b = torch::randn({16, 4});
  CHECK(a.mm(b).scalar_type() == torch::kFloat);
  {
    const nn::AutocastGuard outer(nn::Precision::bf16, torch::kCPU);
    CHECK(nn::autocast_enabled(torch::kCPU));
    CHECK(a.mm(b).scalar_type() == torch::kBFloat16);
    {
      const nn::AutocastGuard inner(nn::Precision::fp32, torch::kCPU);  // fp32: no change
      CHECK(a.mm(b).scalar_type() == torch::kBFloat16);
    }
    CHECK(nn::autocast_enabled(torch::kCPU));
  }
  CHECK_FALSE(nn::autocast_enabled(torch::kCPU));
  CHECK(a.mm(b).scalar_type() == torch::kFloat);
}

TEST_CASE("precision: nn::linear hands its product to autocast, gradients stay float32",
          "[precision]") {
  namespace nn = ihn_toolkit::nn;
  torch::manual_seed(3);
  nn::Linear layer(16, 8);
  auto x = torch::randn({5, 16});
  auto y32 = layer(x);
  torch::Tensor y16;
  {
    const nn::AutocastGuard autocast(nn::Precision::bf16, torch::kCPU);
    y16 = layer(x);
  }
  CHECK(y16.scalar_type() == torch::kBFloat16);
  // bf16 rounds inputs by up to 2^-9 relative; 16-term dot products of N(0,1) values.
  CHECK(max_abs_diff(y16.to(torch::kFloat), y32) < 0.05);
  CHECK(max_abs_diff(y16.to(torch::kFloat), y32) > 0);
  y16.to(torch::kFloat).sum().backward();
  CHECK(layer->weight.grad().scalar_type() == torch::kFloat);
  CHECK(layer->weight.scalar_type() == torch::kFloat);
}

TEST_CASE("precision: names, and fp16 refused on the CPU", "[precision]") {
  namespace nn = ihn_toolkit::nn;
  CHECK(nn::parse_precision("bf16") == nn::Precision::bf16);
  CHECK(std::string(nn::to_string(nn::parse_precision("fp16"))) == "fp16");
  CHECK_THROWS_WITH(nn::parse_precision("fp8"), Catch::Contains("use fp32, bf16 or fp16"));
  CHECK_THROWS_WITH(nn::check_precision(nn::Precision::fp16, torch::kCPU),
                    Catch::Contains("CUDA only"));
  CHECK_NOTHROW(nn::check_precision(nn::Precision::bf16, torch::kCPU));
  CHECK(nn::precision_support().find("bf16") != std::string::npos);
}

TEST_CASE("precision: the fp16 loss scaler skips steps with Inf or NaN gradients", "[precision]") {
  namespace nn = ihn_toolkit::nn;
  nn::GradScaler scaler(true, /*initial_scale=*/1024, 2.0, 0.5, /*growth_interval=*/3);
  auto w = torch::ones({4}, torch::requires_grad());
  auto loss = (w * w).sum();
  auto scaled = scaler.scale_loss(loss);
  CHECK(scaled.item<double>() == Approx(4 * 1024));
  scaled.backward();
  CHECK(scaler.unscale_gradients({w}));  // finite: the true gradient 2w
  CHECK(torch::allclose(w.grad(), torch::full({4}, 2.0f)));
  scaler.update(false);
  CHECK(scaler.scale() == 1024);
  // An overflowing step: Inf in one gradient -> skip, scale halves, the count restarts.
  w.mutable_grad().fill_(1.0f);
  w.mutable_grad()[2] = std::numeric_limits<float>::infinity();
  CHECK_FALSE(scaler.unscale_gradients({w}));
  scaler.update(true);
  CHECK(scaler.scale() == 512);
  CHECK(scaler.finite_steps() == 0);
  w.mutable_grad().fill_(std::nanf(""));
  CHECK_FALSE(scaler.unscale_gradients({w}));
  // Three finite steps in a row double it.
  scaler.update(true);  // 256
  for (int i = 0; i < 3; ++i) scaler.update(false);
  CHECK(scaler.scale() == 512);
  // Disabled (bf16, fp32): identity, never skips.
  nn::GradScaler off(false);
  w.mutable_grad().fill_(std::numeric_limits<float>::infinity());
  CHECK(off.unscale_gradients({w}));
  CHECK(off.scale_loss(loss).item<double>() == loss.item<double>());
  CHECK_THROWS(nn::GradScaler(true, -1.0));
}

TEST_CASE("precision: ihn's loss runs in float32 inside a caller's bf16 autocast", "[precision]") {
  namespace nn = ihn_toolkit::nn;
  torch::manual_seed(5);
  auto images = torch::randn({6, 32}), reports = torch::randn({6, 32});
  ihn::AlignmentLoss loss;
  const auto reference = loss(images.to(torch::kBFloat16).to(torch::kFloat),
                              reports.to(torch::kBFloat16).to(torch::kFloat));
  torch::Tensor under_autocast;
  {
    const nn::AutocastGuard autocast(nn::Precision::bf16, torch::kCPU);
    under_autocast = loss(images.to(torch::kBFloat16), reports.to(torch::kBFloat16));
  }
  CHECK(under_autocast.scalar_type() == torch::kFloat);
  // The same float32 arithmetic on the same (bf16-valued) inputs: equal, not merely close.
  CHECK(under_autocast.item<float>() == reference.item<float>());
}
