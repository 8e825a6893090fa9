#!/usr/bin/env python3
"""Times the official R2Gen / R2GenCMN Python code on a device, as bench_r2gen / bench_cmn time the
ports: one training step in float32, the same step with the forward pass and loss under
torch.autocast(bfloat16), and a beam-3 decode, of a batch of 16 IU X-Ray studies (two views),
random weights.

The official code is not part of this repository: it is imported from an export of the upstream
repositories (cuhksz-nlp/R2Gen, cuhksz-nlp/R2GenCMN) given by --src or $IHN_OFFICIAL_SRC, a
folder with r2gen/ and r2gencmn/ (main.py, models/, modules/ each; benchmarks/gpu/compare.sh
says how to make it). Nothing upstream is edited; at run time only:
  * pretrained weights are refused (torch.hub / torchvision downloads raise), the weights are the
    modules' own random initialisation;
  * main.py is imported for its argument defaults (parse_agrs) with its data, metric and trainer
    imports replaced by empty modules; the tokenizer is a stand-in with the vocabulary size of
    IU X-Ray (760 words), so no annotation file is needed;
  * on the CPU, Tensor.cuda (called by the official decoding code) returns the tensor itself;
  * small config: the extractor's AvgPool2d(7) becomes AvgPool2d(4), the same global average of
    the 4x4 map of a 128x128 image;
  * without torchvision, a ResNet of the same layout (own code, below) stands in; the output
    line says which was used.
The cuDNN flags are those of the official main(): deterministic True, benchmark False
(--cudnn-deterministic 0 to lift it); TF32 is left at PyTorch's defaults (as LibTorch's).

Each measurement prints one line, RESULT {...}, shaped as the C++ benchmarks' lines: "bench"
train | beam, "impl" official, "precision", "seconds" {median, min, max, all}.

usage: official_bench.py --arch r2gen|cmn [--what train,train_bf16,beam] [--device cuda|cpu]
                         [--config paper|small] [--warmup N] [--reps N] [--beam-warmup N]
                         [--beam-reps N] [--threads N] [--src DIR] [--out FILE]
"""
import argparse
import copy
import json
import os
import statistics
import sys
import time
import types

import torch

VOCAB, BATCH, MAX_LEN, SEED = 760, 16, 60, 9233
# The C++ benchmarks' 16 report lengths (BOS ... EOS, 617 tokens in all).
LENGTHS = [60, 60, 22, 35, 41, 28, 36, 45, 30, 33, 38, 40, 44, 50, 25, 30]

# Command-line flags of the official main.py for each configuration; everything else keeps
# main.py's defaults (dropout, learning rates, Adam settings, beam size 3, trigram blocking).
CONFIG_FLAGS = {
    ('r2gen', 'paper'): ['--visual_extractor', 'resnet101', '--d_vf', '2048', '--d_model', '512',
                         '--d_ff', '512', '--num_heads', '8', '--num_layers', '3',
                         '--rm_num_slots', '3', '--rm_num_heads', '8', '--rm_d_model', '512'],
    ('r2gen', 'small'): ['--visual_extractor', 'resnet18', '--d_vf', '512', '--d_model', '256',
                         '--d_ff', '256', '--num_heads', '4', '--num_layers', '2',
                         '--rm_num_slots', '3', '--rm_num_heads', '4', '--rm_d_model', '256'],
    ('cmn', 'paper'): ['--visual_extractor', 'resnet101', '--d_vf', '2048', '--d_model', '512',
                       '--d_ff', '512', '--num_heads', '8', '--num_layers', '3', '--topk', '32',
                       '--cmm_size', '2048', '--cmm_dim', '512'],
    ('cmn', 'small'): ['--visual_extractor', 'resnet18', '--d_vf', '512', '--d_model', '256',
                       '--d_ff', '256', '--num_heads', '4', '--num_layers', '2', '--topk', '16',
                       '--cmm_size', '512', '--cmm_dim', '256'],
}
IMAGE = {'paper': 224, 'small': 128}


def now():
    return time.perf_counter()


def seconds(times):
    return {'median': statistics.median(times), 'min': min(times), 'max': max(times),
            'all': times}


# ---------------------------------------------------------------------------------------------
# A stand-in for torchvision.models.resnet18 / resnet101 where torchvision is not installed:
# the same modules in the same order (conv1, bn1, relu, maxpool, layer1..4, avgpool, fc), the
# same shapes and the same initialisation rule, so the official extractor (children()[:-2])
# computes the same network.
class _Basic(torch.nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride, down):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(width)
        self.relu = torch.nn.ReLU(inplace=True)
        self.conv2 = torch.nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(width)
        self.downsample = down

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck(torch.nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride, down):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(width)
        self.conv2 = torch.nn.Conv2d(width, width, 3, stride, 1, bias=False)  # stride here (v1.5)
        self.bn2 = torch.nn.BatchNorm2d(width)
        self.conv3 = torch.nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = torch.nn.BatchNorm2d(width * 4)
        self.relu = torch.nn.ReLU(inplace=True)
        self.downsample = down

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class _ResNet(torch.nn.Module):
    def __init__(self, block, counts):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(64)
        self.relu = torch.nn.ReLU(inplace=True)
        self.maxpool = torch.nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (width, count) in enumerate(zip((64, 128, 256, 512), counts)):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or cin != width * block.expansion:
                down = torch.nn.Sequential(
                    torch.nn.Conv2d(cin, width * block.expansion, 1, stride, bias=False),
                    torch.nn.BatchNorm2d(width * block.expansion))
            blocks = [block(cin, width, stride, down)]
            cin = width * block.expansion
            blocks += [block(cin, width, 1, None) for _ in range(count - 1)]
            setattr(self, 'layer%d' % (i + 1), torch.nn.Sequential(*blocks))
        self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(cin, 1000)
        for m in self.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, torch.nn.BatchNorm2d):
                torch.nn.init.ones_(m.weight)
                torch.nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _standin_models():
    m = types.ModuleType('torchvision.models')
    m.resnet18 = lambda pretrained=False, **k: _ResNet(_Basic, (2, 2, 2, 2))
    m.resnet101 = lambda pretrained=False, **k: _ResNet(_Bottleneck, (3, 4, 23, 3))
    return m


# ---------------------------------------------------------------------------------------------
def _refuse(*a, **k):
    raise RuntimeError('official_bench: download of pretrained weights refused (%r %r)' % (a, k))


def prepare_torchvision(force_standin):
    """torchvision.models with downloads refused and `pretrained=` accepted by any version;
    the stand-in above when torchvision is missing (or forced). Returns a description."""
    import torch.hub
    torch.hub.load_state_dict_from_url = _refuse
    if not force_standin:
        try:
            import torchvision
            import torchvision.models as tvm
        except Exception:  # noqa: BLE001  (missing, or built for another torch)
            tvm = None
        if tvm is not None:
            for mod in ('torchvision.models._api', 'torchvision.models.resnet'):
                if mod in sys.modules and hasattr(sys.modules[mod], 'load_state_dict_from_url'):
                    sys.modules[mod].load_state_dict_from_url = _refuse

            def no_weights(fn):
                def build(pretrained=False, **k):
                    if pretrained:
                        _refuse(fn.__name__)
                    try:
                        return fn(weights=None, **k)
                    except TypeError:  # torchvision before 0.13
                        return fn(pretrained=False, **k)
                return build
            tvm.resnet18 = no_weights(tvm.resnet18)
            tvm.resnet101 = no_weights(tvm.resnet101)
            return 'torchvision ' + torchvision.__version__
    m = _standin_models()
    tv = types.ModuleType('torchvision')
    tv.models = m
    sys.modules['torchvision'] = tv
    sys.modules['torchvision.models'] = m
    return 'stand-in ResNet (torchvision not used)'


class StandInTokenizer:
    """What the official models read from a tokenizer: the vocabulary (ids 1..760)."""

    def __init__(self, size):
        self.idx2token = {i: 'w%d' % i for i in range(1, size + 1)}
        self.token2idx = {t: i for i, t in self.idx2token.items()}

    def get_vocab_size(self):
        return len(self.token2idx)


def import_official(src, arch, device):
    repo = os.path.join(src, {'r2gen': 'r2gen', 'cmn': 'r2gencmn'}[arch])
    if not os.path.isfile(os.path.join(repo, 'main.py')):
        sys.exit('official_bench: %s has no main.py; export the official code first '
                 '(benchmarks/gpu/compare.sh --help says how)' % repo)
    sys.path.insert(0, repo)
    if device.type == 'cpu':
        torch.Tensor.cuda = lambda self, *a, **k: self
    import modules  # noqa: F401  (the official package)
    for name, attrs in (('modules.metrics', ['compute_scores']), ('modules.trainer', ['Trainer']),
                        ('modules.dataloaders', ['R2DataLoader'])):
        stub = types.ModuleType(name)
        for a in attrs:
            setattr(stub, a, None)
        sys.modules[name] = stub
    import main
    from modules.loss import compute_loss
    from modules.optimizers import build_optimizer
    if arch == 'r2gen':
        from models.r2gen import R2GenModel as Model
    else:
        from models.models import BaseCMNModel as Model
    commit_file = os.path.join(repo, '.exported_commit')
    commit = open(commit_file).read().strip() if os.path.isfile(commit_file) else 'unknown'
    return types.SimpleNamespace(main=main, compute_loss=compute_loss,
                                 build_optimizer=build_optimizer, Model=Model, commit=commit)


def build(O, arch, cfg, device):
    sys.argv = ['main.py', '--dataset_name', 'iu_xray', '--max_seq_length', str(MAX_LEN),
                '--batch_size', str(BATCH), '--beam_size', '3'] + CONFIG_FLAGS[(arch, cfg)]
    args = O.main.parse_agrs()
    args.visual_extractor_pretrained = False
    torch.manual_seed(SEED)
    model = O.Model(args, StandInTokenizer(VOCAB))
    if IMAGE[cfg] != 224:
        model.visual_extractor.avg_fnt = torch.nn.AvgPool2d(kernel_size=IMAGE[cfg] // 32)
    model.to(device)
    return args, model


def make_batch(cfg, device):
    g = torch.Generator().manual_seed(SEED)
    images = torch.randn(BATCH, 2, 3, IMAGE[cfg], IMAGE[cfg], generator=g)
    ids = torch.zeros(BATCH, MAX_LEN, dtype=torch.long)
    masks = torch.zeros(BATCH, MAX_LEN)
    for b, n in enumerate(LENGTHS):
        ids[b, 1:n - 1] = torch.randint(1, VOCAB + 1, (n - 2,), generator=g)
        masks[b, :n] = 1
    return images.to(device), ids.to(device), masks.to(device)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--arch', choices=['r2gen', 'cmn'], required=True)
    ap.add_argument('--what', default='train,train_bf16,beam',
                    help='comma-separated: train, train_bf16, beam (default: all three)')
    ap.add_argument('--device', default='cuda')
    ap.add_argument('--config', choices=['paper', 'small'], default='paper')
    ap.add_argument('--warmup', type=int, default=2, help='training steps before timing')
    ap.add_argument('--reps', type=int, default=5, help='timed training steps')
    ap.add_argument('--beam-warmup', type=int, default=1)
    ap.add_argument('--beam-reps', type=int, default=3)
    ap.add_argument('--threads', type=int, default=0, help='torch.set_num_threads (0: leave)')
    ap.add_argument('--cudnn-deterministic', type=int, choices=[0, 1], default=1,
                    help="the official main()'s torch.backends.cudnn.deterministic (default 1)")
    ap.add_argument('--torchvision', choices=['auto', 'standin'], default='auto')
    ap.add_argument('--src', default=os.environ.get('IHN_OFFICIAL_SRC', ''),
                    help='the exported official code (default $IHN_OFFICIAL_SRC)')
    ap.add_argument('--out', default=None, help='append the JSON lines to this file too')
    opt = ap.parse_args()
    whats = [w for w in opt.what.split(',') if w]
    for w in whats:
        if w not in ('train', 'train_bf16', 'beam'):
            ap.error('unknown measurement %s' % w)
    if not opt.src:
        ap.error('give the exported official code with --src or $IHN_OFFICIAL_SRC')
    device = torch.device(opt.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        sys.exit('official_bench: --device cuda, but torch.cuda.is_available() is False')
    if opt.threads > 0:
        torch.set_num_threads(opt.threads)

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    torch.backends.cudnn.deterministic = bool(opt.cudnn_deterministic)  # as the official main()
    torch.backends.cudnn.benchmark = False
    vision = prepare_torchvision(opt.torchvision == 'standin')
    O = import_official(os.path.abspath(opt.src), opt.arch, device)
    args, model = build(O, opt.arch, opt.config, device)
    images, ids, masks = make_batch(opt.config, device)
    facts = {
        'impl': 'official', 'arch': opt.arch, 'cfg': opt.config, 'device': device.type,
        'threads': torch.get_num_threads(), 'batch': BATCH, 'image': IMAGE[opt.config],
        'torch': torch.__version__, 'vision': vision, 'official_commit': O.commit,
        'cudnn_deterministic': torch.backends.cudnn.deterministic,
        'tf32_matmul': torch.backends.cuda.matmul.allow_tf32,
        'tf32_cudnn': torch.backends.cudnn.allow_tf32,
        'gpu': torch.cuda.get_device_name(device) if device.type == 'cuda' else None,
    }

    def emit(result):
        line = json.dumps(dict(facts, **result))
        print('RESULT ' + line, flush=True)
        if opt.out:
            with open(opt.out, 'a') as f:
                f.write(line + '\n')

    clip = opt.arch == 'r2gen'  # R2Gen's trainer clips gradient values at 0.1, R2GenCMN's does not
    # Every measurement starts from the same random weights, as each C++ run in its own process
    # does (training steps change what the decoder emits, and so how long a decode runs).
    initial = copy.deepcopy(model.state_dict())
    for what in whats:
        model.load_state_dict(initial)
        if what in ('train', 'train_bf16'):
            bf16 = what == 'train_bf16'
            optimizer = O.build_optimizer(args, model)  # official: Adam, amsgrad, two groups
            model.train()

            def step():
                # The official trainer's loop body; under autocast the forward pass and the loss.
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                    output = model(images, ids, mode='train')
                    loss = O.compute_loss(output, ids, masks)
                value = loss.item()
                optimizer.zero_grad()
                loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_value_(model.parameters(), 0.1)
                optimizer.step()
                return value

            times, loss = [], None
            for i in range(opt.warmup + opt.reps):
                sync()
                t0 = now()
                loss = step()
                sync()
                if i >= opt.warmup:
                    times.append(now() - t0)
            emit({'bench': 'train', 'precision': 'bf16' if bf16 else 'fp32', 'warmup': opt.warmup,
                  'reps': opt.reps, 'clip_grad_value_0.1': clip, 'loss': loss,
                  'seconds': seconds(times)})
        else:
            model.eval()
            args.sample_method, args.beam_size = 'beam_search', 3
            times, generated = [], 0
            for i in range(opt.beam_warmup + opt.beam_reps):
                sync()
                t0 = now()
                with torch.no_grad():
                    out = model(images, mode='sample')
                sync()
                if i >= opt.beam_warmup:
                    times.append(now() - t0)
                seq = out[0] if opt.arch == 'cmn' else out
                generated = int((seq > 0).sum(1).max())
            emit({'bench': 'beam', 'precision': 'fp32', 'warmup': opt.beam_warmup,
                  'reps': opt.beam_reps, 'beam_size': 3, 'block_trigrams': args.block_trigrams,
                  'max_generated_len': generated, 'seconds': seconds(times)})


if __name__ == '__main__':
    main()
