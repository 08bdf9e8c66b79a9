"""Speed and memory benchmark of S2AFormer (classifier, dense models) and timm peers.

Classification throughput (images/s, median of ``--rounds`` after ``--warmup``)
for each ``--variants`` classifier in training form (eval mode) and deploy form
(BN folded, heads merged, conv+GELU fused), optionally ``--compile``
(torch.compile of the deploy form, inductor with ``freezing``) and ``--onnx`` (ONNX
Runtime, same thread count), side by side with any ``--timm`` models
(re-parameterised with timm's ``reparameterize_model``, run as built, in
channels-last and, with those flags, compiled and in ONNX Runtime), all in this process
with the same ``--threads``. ``--peers`` adds the paper's Table III models whose
top-1 is within 0.5 point of a chosen variant and prints each variant's best form
against each peer's best form.

It first measures the machine's fp32 GEMM FLOP/s: the best of torch.matmul
(BLAS) at 1024-4096 and a 2048^3 GEMM run as a 1x1 convolution (oneDNN). Each
model gets its achieved FLOP/s (2 FLOPs per MAC; honest MACs from
``s2aformer_mm.complexity.count_macs``, attention matmuls included), its fraction
of that best GEMM (%GEMM) and of torch.matmul alone (%mm).

``--dense`` adds latency + peak memory of Semantic FPN (512x512), RetinaNet and
Mask R-CNN (800x1333) inference (``mode='tensor'``: network forward without
post-processing) for ``--dense-variant``, and ``--train`` a training step
(forward + backward + AdamW step; time + peak memory) for one config per task
(classification batch 16 at 224^2, Semantic FPN batch 2 at 512^2, RetinaNet and
Mask R-CNN batch 1 at 800x1333; by default all but Mask R-CNN), plus rows under
autocast (``--amp``: fp16 with loss scaling on CUDA, bf16 on CPU, as the training
tools' ``--amp``) and with gradient checkpointing (``--with-cp``). ``--dense-tasks``
picks the tasks of both; classification only has a training row (its inference is
the classifier benchmark). ``--attn-memory`` measures the RetinaNet
training step with the literal attention formula (``fused_attn=False``) and with
the strip-attention kernel. Every dense/training measurement runs in a fresh
child process; on CPU "peak" is the process's peak RSS during the timed steps
(Linux: ``VmHWM``, reset after the model is built) and "built" its RSS before
them; on GPU ``torch.cuda.max_memory_allocated``.

When timing on the CPU, each process first applies
:func:`s2aformer_mm.runtime.tune_cpu_allocator` for its use (inference or training),
as the train/test tools do (``--default-allocator`` to measure glibc's defaults).

Examples (CPU numbers are only comparable at the same thread count on a quiet
machine)::

    python tools/analysis/benchmark.py --variants t --batch 16 --threads 2 --onnx --compile
    python tools/analysis/benchmark.py --variants mini t xs s m --peers --onnx --threads 2
    python tools/analysis/benchmark.py --variants xs --timm pvt_v2_b0 pvt_v2_b1 efficientvit_m5
    python tools/analysis/benchmark.py --no-cls --dense --train --amp --with-cp \
        --attn-memory --dense-variant s --threads 2
    python tools/analysis/benchmark.py ... --json results.json
"""
import argparse
import copy
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import s2aformer_mm
from s2aformer_mm import S2AFormer
from s2aformer_mm.apis import (ClassifierLogits, build_model_from_config, export_onnx,
                               onnxruntime_session)
from s2aformer_mm.complexity import count_macs
from s2aformer_mm.models import switch_to_deploy
from s2aformer_mm.runtime import tune_cpu_allocator

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLS_CONFIG = os.path.join(REPO, 'configs', 'mmpretrain', 's2aformer_{}_4xb256_in1k.py')
DENSE = {  # task -> (config pattern, input H, W, --train batch)
    'classification': ('configs/mmpretrain/s2aformer_{}_4xb256_in1k.py', 224, 224, 16),
    'semantic-fpn': ('configs/mmseg/fpn_s2aformer_{}_ade20k.py', 512, 512, 2),
    'retinanet': ('configs/mmdet/retinanet_s2aformer_{}_fpn_1x_coco.py', 800, 1333, 1),
    'mask-rcnn': ('configs/mmdet/mask-rcnn_s2aformer_{}_fpn_1x_coco.py', 800, 1333, 1),
}
#: Tasks without ``--dense-tasks``. Classification inference is the classifier benchmark's,
#: so ``--dense`` never runs it; Mask R-CNN training is left out of the default for time.
DEFAULT_TASKS = {'dense': ['semantic-fpn', 'retinanet', 'mask-rcnn'],
                 'train': ['classification', 'semantic-fpn', 'retinanet']}


#: The paper's Table III rows that have a timm model: timm name -> (Table III name,
#: resolution of the row, top-1 %). Two rows are left out on purpose: EfficientViT-M5
#: (80.8 %) and SHViT-S4 (82.0 %) at 512^2 -- their accuracy needs 512^2 inputs, while
#: the comparison runs every model at the same resolution (224^2 by default); their
#: 224^2 / 256^2 rows are here. FastViT-T8/T12/SA12, SHViT-S4 are 256^2 rows.
TABLE3_TIMM = {
    'deit_tiny_patch16_224': ('DeiT-T', 224, 74.5),
    'mobilevit_xs': ('MobileViT-XS', 224, 74.8),
    'shvit_s2': ('SHViT-S2', 224, 75.2),
    'inception_next_atto': ('InceptionNeXt-A', 224, 75.3),
    'fastvit_t8': ('FastViT-T8', 256, 75.6),
    'efficientvit_m5': ('EfficientViT-M5', 224, 77.1),
    'poolformer_s12': ('PoolFormer-S12', 224, 77.2),
    'shvit_s3': ('SHViT-S3', 224, 77.4),
    'mobilevit_s': ('MobileViT-S', 224, 78.4),
    'starnet_s4': ('StarNet-S4', 224, 78.4),
    'repvit_m0_9': ('RepViT-M0.9', 224, 78.7),
    'edgenext_small': ('EdgeNeXt-S', 224, 78.8),
    'fastvit_t12': ('FastViT-T12', 256, 79.1),
    'efficientformer_l1': ('EfficientFormer-L1', 224, 79.2),
    'shvit_s4': ('SHViT-S4', 256, 79.4),
    'poolformer_s24': ('PoolFormer-S24', 224, 80.3),
    'fastvit_sa12': ('FastViT-SA12', 256, 80.6),
    'repvit_m1_1': ('RepViT-M1.1', 224, 80.7),
    'repvit_m1_5': ('RepViT-M1.5', 224, 82.3),
    'inception_next_tiny': ('InceptionNeXt-T', 224, 82.3),
    'efficientformer_l3': ('EfficientFormer-L3', 224, 82.4),
    'mambaout_tiny': ('MambaOut-Tiny', 224, 82.7),
}
#: S2AFormer top-1 at 224^2 (Table III).
S2A_TOP1 = {'mini': 75.1, 't': 77.7, 'xs': 78.9, 's': 80.8, 'm': 82.3}


def table3_peers(arch, within=0.5):
    """timm models whose Table III top-1 is within ``within`` points of the variant's."""
    return [name for name, (_, _, top1) in TABLE3_TIMM.items()
            if abs(top1 - S2A_TOP1[arch]) <= within + 1e-9]


# --------------------------------------------------------------------------- runtime
def amp_dtype(device_type):
    """``--amp``'s autocast dtype, the training tools' choice (engine/launch.py
    ``apply_amp``): fp16 (AmpOptimWrapper) on CUDA, bf16 on CPU."""
    return torch.float16 if device_type == 'cuda' else torch.bfloat16


AMP_NAMES = {torch.float16: 'fp16', torch.bfloat16: 'bf16'}


def cpu_allocator(device_type, default_allocator, use='inference'):
    """Tune glibc for ``use`` only where the timed work runs on the CPU (GPU runs time
    no CPU rows: ONNX Runtime is skipped there); returns the line to log."""
    if device_type != 'cpu':
        return f'CPU allocator: glibc defaults (timing on {device_type}; tuned for CPU only)'
    if default_allocator:
        return 'CPU allocator: glibc defaults (--default-allocator)'
    return tune_cpu_allocator(use)


# --------------------------------------------------------------------------- timing
def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def median_time(fn, warmup, rounds, device):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_flops(device, rounds=5):
    """The machine's fp32 GEMM FLOP/s: the best of square matmuls (BLAS; n = 1024,
    2048, 4096) and, on CPU, the same 2048^3 GEMM as a 1x1 convolution (oneDNN,
    which the convolutions use; on some CPUs, e.g. MKL on AMD, it is the faster
    GEMM). Returns ``(best, {name: FLOP/s})``."""
    found = {}
    for n in (1024, 2048, 4096):
        a = torch.randn(n, n, device=device)
        b = torch.randn(n, n, device=device)
        found[f'matmul {n}^3'] = 2 * n ** 3 / median_time(lambda a=a, b=b: a @ b, 2, rounds,
                                                          device)
    if device.type == 'cpu' and torch.backends.mkldnn.is_available():
        n = 2048
        x = torch.randn(1, n, 64, 32).contiguous(memory_format=torch.channels_last)
        w = torch.randn(n, n, 1, 1)
        with torch.no_grad():
            t = median_time(lambda: torch.nn.functional.conv2d(x, w), 2, rounds, device)
        found[f'1x1 conv {n}^3 (oneDNN)'] = 2 * n ** 3 / t
    return max(found.values()), found


# --------------------------------------------------------------------------- models
def build_classifier(arch):
    """mmpretrain ImageClassifier: from the repo's config if present, else directly."""
    path = CLS_CONFIG.format(arch)
    if os.path.isfile(path):
        from mmengine.config import Config
        cfg = Config.fromfile(path)
        cfg.model.backbone.pop('init_cfg', None)
        return build_model_from_config(cfg), os.path.relpath(path, REPO)
    s2aformer_mm.require('mmpretrain')
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(dict(
            type='ImageClassifier', backbone=dict(type='S2AFormer', arch=arch),
            head=dict(type='S2AFormerClsHead', num_classes=1000,
                      in_channels=S2AFormer.arch_zoo[arch]['channels'][-1])))
    return model.eval(), 'built directly'


def build_timm(name):
    if importlib.util.find_spec('timm') is None:
        raise SystemExit('--timm needs the optional package timm: pip install timm '
                         '(it is not part of tools/setup_env.sh).')
    import timm
    from timm.utils.model import reparameterize_model
    model = timm.create_model(name, pretrained=False, num_classes=1000).eval()
    # FastViT / RepViT / MobileOne ...: fold branches; a no-op for other models.
    return reparameterize_model(model)


def macs_of(model, shape):
    try:
        with torch.no_grad():
            return count_macs(model, torch.randn(1, 3, *shape), 'honest')
    except Exception as e:  # counting is informative only; the speed row stays
        print(f'  (MAC count failed for {type(model).__name__}: {type(e).__name__}: {e})')
        return None


# --------------------------------------------------------------------------- classifier
def bench_classifiers(args, device, peak, rows):
    shape = tuple(args.shape)
    x = torch.randn(args.batch, 3, *shape, device=device)
    entries = []
    for arch in args.variants:
        model, source = build_classifier(arch)
        net = ClassifierLogits(model).eval()
        macs = macs_of(net, shape)
        entries.append((f's2aformer-{arch}', 'train-form eval', net, macs, source))
        dep = ClassifierLogits(switch_to_deploy(copy.deepcopy(model))).eval()
        entries.append((f's2aformer-{arch}', 'deploy', dep, macs, source))
        if args.compile:
            entries.append((f's2aformer-{arch}', 'deploy+compile', dep, macs, source))
        if args.onnx:
            entries.append((f's2aformer-{arch}', 'deploy+onnxruntime', dep, macs, source))
    for name in args.timm:
        try:
            model = build_timm(name)
        except SystemExit:
            raise
        except Exception as e:
            print(f'  {name}: cannot build ({type(e).__name__}: {e})')
            rows.append(dict(model=name, form='timm', failed=f'build: {type(e).__name__}: {e}'))
            continue
        macs = macs_of(model, shape)
        entries.append((name, 'timm (reparam)', model, macs, 'timm'))
        # Peers get their best form too: channels-last often helps convnets on CPU.
        entries.append((name, 'timm channels-last', model, macs, 'timm'))
        if args.compile:
            entries.append((name, 'timm+compile', model, macs, 'timm'))
        if args.onnx:
            entries.append((name, 'timm+onnxruntime', model, macs, 'timm'))
    tmp = tempfile.mkdtemp(prefix='s2a_bench_')
    for name, form, net, macs, source in entries:
        try:
            _bench_one(args, device, peak, rows, x, shape, tmp, name, form, net, macs, source)
        except Exception as e:  # one model failing (e.g. an ONNX export) must not end the run
            print(f'  {name:22s} {form:20s} FAILED: {type(e).__name__}: {str(e)[:200]}', flush=True)
            rows.append(dict(model=name, form=form, failed=f'{type(e).__name__}: {e}'[:500]))


def _bench_one(args, device, peak, rows, x, shape, tmp, name, form, net, macs, source):
    net = net.to(device).eval()
    extra = ''
    if form.endswith('channels-last'):
        net = copy.deepcopy(net).to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if form.endswith('onnxruntime'):
        if device.type != 'cpu':
            return
        path = os.path.join(tmp, f'{name}.onnx')
        t0 = time.time()
        export_onnx(net.cpu(), path, x.cpu(), dynamic=True)
        sess = onnxruntime_session(path, args.threads)
        feed = {sess.get_inputs()[0].name: x.cpu().numpy()}
        fn = lambda: sess.run(None, feed)  # noqa: E731
        extra = f'export {time.time() - t0:.0f}s'
    else:
        run = net
        if form.endswith('compile'):
            import torch._inductor.config as inductor_config
            run = torch.compile(net)
            t0 = time.time()
            # Freezing (inference graphs): weights become constants, so inductor
            # pre-packs them for oneDNN and fuses conv + activation. It is read when
            # the first call compiles; torch.compile(options={'freezing': True}) is
            # ignored in torch 2.14 (weights stayed graph inputs).
            with torch.inference_mode(), inductor_config.patch(freezing=True):
                run(x)
            extra = f'compile {time.time() - t0:.0f}s'

        def fn(run=run):
            with torch.inference_mode():
                return run(x)
    t = median_time(fn, args.warmup, args.rounds, device)
    ips = args.batch / t
    flops = 2 * macs * args.batch / t if macs else None
    rows.append(dict(
        model=name, form=form, device=device.type, threads=args.threads, batch=args.batch,
        shape=list(shape), median_ms=t * 1e3, images_per_s=ips,
        gmacs=macs / 1e9 if macs else None, achieved_gflops=flops / 1e9 if flops else None,
        gemm_fraction=flops / peak[0] if flops else None,
        matmul_fraction=flops / peak[1] if flops else None, note=extra or source))
    print(f'  {name:22s} {form:20s} {t * 1e3:9.1f} ms  {ips:8.1f} img/s', flush=True)


# --------------------------------------------------------------------------- dense (child)
def _det_inputs(model, batch, h, w, with_mask):
    from mmdet.testing import demo_mm_inputs
    data = demo_mm_inputs(batch, [[3, h, w]] * batch, num_items=[5] * batch, with_mask=with_mask)
    return model.data_preprocessor(data, True)


def _cls_inputs(batch, h, w):
    from mmpretrain.structures import DataSample
    return dict(inputs=torch.rand(batch, 3, h, w) * 255,
                data_samples=[DataSample().set_gt_label(i % 1000) for i in range(batch)])


def _seg_inputs(model, batch, h, w):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    samples = []
    for _ in range(batch):
        s = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, h, w)))
        samples.append(s)
    return dict(inputs=torch.randn(batch, 3, h, w), data_samples=samples)


def child(spec):
    """One dense measurement in this (fresh) process; prints a JSON line."""
    cpu_allocator(spec['device'], spec['default_allocator'],
                  'train' if spec['train'] else 'inference')
    torch.set_num_threads(spec['threads'])
    device = torch.device(spec['device'])
    cfg_path, h, w, _ = DENSE[spec['task']]
    from mmengine.config import Config
    cfg = Config.fromfile(os.path.join(REPO, cfg_path.format(spec['variant'])))
    cfg.model.backbone.pop('init_cfg', None)
    cfg.model.backbone['fused_attn'] = spec['fused']
    cfg.model.backbone['with_cp'] = spec.get('with_cp', False)
    if device.type == 'cpu':  # SyncBN (mmseg bases) needs a GPU
        cfg.model = _no_syncbn(cfg.model)
    model = build_model_from_config(cfg).to(device)
    batch = spec['batch']
    if spec['task'] == 'classification':
        data = model.data_preprocessor(_cls_inputs(batch, h, w), spec['train'])
    elif spec['task'] == 'semantic-fpn':
        data = _seg_inputs(model, batch, h, w)
        data = model.data_preprocessor(data, spec['train'])
    else:
        data = _det_inputs(model, batch, h, w, spec['task'] == 'mask-rcnn')
    data = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in data.items()}
    dtype = amp_dtype(device.type)
    amp = torch.autocast(device.type, dtype=dtype, enabled=spec['amp'])
    if spec['train']:
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        # fp16 steps pay for dynamic loss scaling, as under AmpOptimWrapper; else a no-op.
        scaler = torch.amp.GradScaler(device.type,
                                      enabled=spec['amp'] and dtype == torch.float16)

        def fn():
            with amp:
                losses = model(**data, mode='loss')
            loss = sum(v.sum() if torch.is_tensor(v) else sum(v) for k, v in losses.items()
                       if 'loss' in k)
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    else:
        if spec['deploy']:
            switch_to_deploy(model)
        model.eval()

        def fn():
            with torch.inference_mode(), amp:
                return model(data['inputs'], data['data_samples'], mode='tensor')
    base_rss = _rss_mib('VmRSS')
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    elif not _reset_peak_rss():  # else the build's own peak could hide the run's
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = median_time(fn, spec['warmup'], spec['rounds'], device)
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == 'cuda'
            else _rss_mib('VmHWM') or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print('RESULT ' + json.dumps(dict(median_ms=t * 1e3, peak_mib=peak, base_mib=base_rss)))


def _rss_mib(field):
    """``VmRSS`` / ``VmHWM`` (peak) of this process from /proc, in MiB (Linux), else None."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak_rss():
    """Reset this process's peak RSS (``VmHWM``) so it covers the measured run only."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def _no_syncbn(model_cfg):
    text = model_cfg.__repr__()
    if 'SyncBN' not in text:
        return model_cfg
    from mmengine.config import ConfigDict

    def walk(node):
        if isinstance(node, dict):
            return ConfigDict({k: ('BN' if k == 'type' and v == 'SyncBN' else walk(v))
                               for k, v in node.items()})
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node
    return walk(model_cfg)


def run_child(spec, rows, label):
    cmd = [sys.executable, os.path.abspath(__file__), '--child', json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')), None)
    if proc.returncode or line is None:
        raise RuntimeError(f'{label} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}')
    res = json.loads(line[len('RESULT '):])
    _, h, w, _ = DENSE[spec['task']]
    rows.append(dict(model=f"{spec['task']}-s2aformer-{spec['variant']}", form=label,
                     with_cp=spec.get('with_cp', False),
                     device=spec['device'], threads=spec['threads'], batch=spec['batch'],
                     shape=[h, w], median_ms=res['median_ms'], peak_mib=res['peak_mib'],
                     model_mib=res['base_mib'],
                     amp=AMP_NAMES[amp_dtype(spec['device'])] if spec['amp'] else None))
    print(f"  {rows[-1]['model']:30s} {label:34s} {res['median_ms']:9.1f} ms  "
          f"peak {res['peak_mib']:8.0f} MiB (after build {res['base_mib']:.0f})", flush=True)


def dense_plan(args, device):
    """``(child spec, row label)`` of every dense / training measurement, in run order."""
    base = dict(variant=args.dense_variant, device=device.type, threads=args.threads,
                warmup=1, rounds=args.dense_rounds, amp=False, fused=True, deploy=False,
                default_allocator=args.default_allocator)
    plan = []
    if args.dense:
        for task in args.dense_tasks or DEFAULT_TASKS['dense']:
            if task == 'classification':
                continue
            for deploy in (False, True):
                plan.append((dict(base, task=task, train=False, batch=1, deploy=deploy),
                             'inference ' + ('deploy' if deploy else 'train-form eval')))
    if args.train:
        modes = [('train step', {})]
        if args.amp:
            modes.append((f'train step {AMP_NAMES[amp_dtype(device.type)]} autocast',
                          dict(amp=True)))
        if args.with_cp:
            modes.append(('train step with_cp', dict(with_cp=True)))
        for task in args.dense_tasks or DEFAULT_TASKS['train']:
            for label, extra in modes:
                plan.append((dict(base, task=task, train=True, batch=DENSE[task][3], **extra),
                             label))
    if args.attn_memory:
        for fused in (False, True):
            plan.append((dict(base, task='retinanet', train=True, batch=1, fused=fused),
                         'train step, attn ' + ('strip kernel' if fused else 'formula')))
    return plan


def bench_dense(args, device, rows):
    for spec, label in dense_plan(args, device):
        run_child(spec, rows, label)


# --------------------------------------------------------------------------- main
def peer_verdicts(args, rows):
    """For each variant, its best form against each Table III peer's best form."""
    best = {}
    for r in rows:
        if 'images_per_s' in r and r['images_per_s'] > best.get(r['model'], (0, ''))[0]:
            best[r['model']] = (r['images_per_s'], r['form'])
    lines = []
    for arch in args.variants:
        mine = best.get(f's2aformer-{arch}')
        if mine is None:
            continue
        for peer in table3_peers(arch):
            if peer not in best:
                continue
            name, res, top1 = TABLE3_TIMM[peer]
            ratio = mine[0] / best[peer][0]
            lines.append(f"s2aformer-{arch:4s} ({S2A_TOP1[arch]:.1f} %) {mine[0]:7.1f} img/s "
                         f"[{mine[1]}]  vs  {peer:20s} ({name} @{res}: {top1:.1f} %) "
                         f"{best[peer][0]:7.1f} img/s [{best[peer][1]}]  -> {ratio:.2f}x "
                         f"{'OK' if ratio >= 1 else 'SLOWER'}")
    if lines:
        print('\nTable III peers (top-1 within 0.5 point), best form of each, same process:')
        print('\n'.join(lines))


def print_table(rows, peak):
    print(f'\nfp32 GEMM: {peak[0] / 1e9:.1f} GFLOP/s (best of the GEMMs above, medians; '
          f'%GEMM), torch.matmul alone {peak[1] / 1e9:.1f} (%mm)')
    cls = [r for r in rows if 'images_per_s' in r]
    for r in rows:
        if 'failed' in r:
            print(f"FAILED {r['model']} {r['form']}: {r['failed'][:300]}")
    if cls:
        print(f"\n{'model':22s} {'form':20s} {'batch':>5s} {'res':>8s} {'thr':>3s} {'ms':>9s} "
              f"{'img/s':>8s} {'GMACs':>6s} {'GFLOP/s':>8s} {'%GEMM':>6s} {'%mm':>5s}  note")
        for r in cls:
            g = f"{r['gmacs']:.3f}" if r['gmacs'] else '-'
            a = f"{r['achieved_gflops']:.1f}" if r['achieved_gflops'] else '-'
            f = f"{100 * r['gemm_fraction']:.1f}" if r['gemm_fraction'] else '-'
            fm = f"{100 * r['matmul_fraction']:.0f}" if r['matmul_fraction'] else '-'
            shape = 'x'.join(map(str, r['shape']))
            print(f"{r['model']:22s} {r['form']:20s} {r['batch']:5d} {shape:>8s} "
                  f"{r['threads']:3d} {r['median_ms']:9.1f} {r['images_per_s']:8.1f} {g:>6s} "
                  f"{a:>8s} {f:>6s} {fm:>5s}  {r['note']}")
    dense = [r for r in rows if 'peak_mib' in r]
    if dense:
        print(f"\n{'model':30s} {'measurement':34s} {'batch':>5s} {'res':>9s} {'thr':>3s} "
              f"{'ms':>9s} {'peak MiB':>9s} {'built MiB':>9s}")
        for r in dense:
            shape = 'x'.join(map(str, r['shape']))
            print(f"{r['model']:30s} {r['form']:34s} {r['batch']:5d} {shape:>9s} "
                  f"{r['threads']:3d} {r['median_ms']:9.1f} {r['peak_mib']:9.0f} "
                  f"{r['model_mib']:9.0f}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--variants', nargs='*', default=['t'], choices=list(S2AFormer.arch_zoo))
    p.add_argument('--no-cls', action='store_true', help='skip the classifier benchmark')
    p.add_argument('--timm', nargs='*', default=[], metavar='NAME', help='timm models to compare')
    p.add_argument('--peers', action='store_true',
                   help="add the timm models of the paper's Table III whose top-1 is within "
                   "0.5 point of a chosen variant, and print the comparison")
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--shape', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'))
    p.add_argument('--threads', type=int, default=torch.get_num_threads())
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--rounds', type=int, default=10)
    p.add_argument('--compile', action='store_true', help='add torch.compile of the deploy form')
    p.add_argument('--onnx', action='store_true', help='add ONNX Runtime (CPU)')
    p.add_argument('--dense', action='store_true', help='dense inference latency + memory')
    p.add_argument('--train', action='store_true', help='training step time + memory')
    p.add_argument('--attn-memory', action='store_true',
                   help='RetinaNet training-step memory, formula vs strip-kernel attention')
    p.add_argument('--amp', action='store_true',
                   help="--train also under autocast, as the training tools' --amp: fp16 "
                   "(with loss scaling) on CUDA, bf16 on CPU")
    p.add_argument('--with-cp', action='store_true',
                   help='--train also with gradient checkpointing of the backbone')
    p.add_argument('--dense-variant', default='s', choices=list(S2AFormer.arch_zoo))
    p.add_argument('--dense-tasks', nargs='+', choices=list(DENSE), metavar='TASK',
                   help=f"tasks of --dense and --train, of {', '.join(DENSE)} (default: "
                   f"--dense {' '.join(DEFAULT_TASKS['dense'])}; --train "
                   f"{' '.join(DEFAULT_TASKS['train'])}). classification only has a --train "
                   "row: its inference is the classifier benchmark")
    p.add_argument('--dense-rounds', type=int, default=3)
    p.add_argument('--default-allocator', action='store_true',
                   help="keep glibc's malloc defaults on CPU (see s2aformer_mm/runtime.py; "
                   "GPU runs never tune it)")
    p.add_argument('--json', help='also write the rows to this file')
    p.add_argument('--child', help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child(json.loads(args.child))

    device = torch.device(args.device)
    alloc = cpu_allocator(device.type, args.default_allocator)
    if args.peers:
        args.timm += [n for a in args.variants for n in table3_peers(a) if n not in args.timm]
    torch.set_num_threads(args.threads)
    print(alloc)
    print(f'torch {torch.__version__}, device {device}'
          + (f' ({torch.cuda.get_device_name()})' if device.type == 'cuda' else '')
          + f', {args.threads} threads (torch.set_num_threads), {os.cpu_count()} CPUs visible')
    best, gemms = gemm_flops(device)
    peak = (best, max(v for k, v in gemms.items() if k.startswith('matmul')))
    print('fp32 GEMM: ' + ', '.join(f'{k} {v / 1e9:.1f}' for k, v in gemms.items())
          + f' GFLOP/s -> {best / 1e9:.1f}')
    rows = []
    if not args.no_cls:
        bench_classifiers(args, device, peak, rows)
    bench_dense(args, device, rows)
    print_table(rows, peak)
    peer_verdicts(args, rows)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(gemm_gflops=peak[0] / 1e9, matmul_gflops=peak[1] / 1e9,
                           gemms={k: v / 1e9 for k, v in gemms.items()},
                           allocator=alloc, torch=torch.__version__, device=str(device),
                           threads=args.threads, rows=rows), f, indent=1)
        print(f'\nwrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
