"""Speed and memory benchmark of S2AFormer (classifier, dense models) and timm peers.

Classification throughput (images/s, median of ``--rounds`` after ``--warmup``)
for each ``--variants`` classifier in training form (eval mode) and deploy form
(BN folded, heads merged), optionally ``--compile`` (torch.compile of the deploy
form) and ``--onnx`` (ONNX Runtime, same thread count), side by side with any
``--timm`` models (FastViT etc. re-parameterised with timm's
``reparameterize_model``), all in this process with the same ``--threads``.
It first measures the machine's fp32 GEMM FLOP/s (a large matmul) and gives each
model's achieved FLOP/s (2 FLOPs per MAC; honest MACs from
``s2aformer_mm.complexity.count_macs``, attention matmuls included) and its
fraction of the GEMM figure.

``--dense`` adds latency + peak memory of Semantic FPN (512x512), RetinaNet and
Mask R-CNN (800x1333) inference (``mode='tensor'``: network forward without
post-processing) for ``--dense-variant``, and ``--train`` a training step
(forward + backward + AdamW step; time + peak memory) for one config per task,
optionally under ``--amp`` (bf16 autocast; CPU or GPU). ``--attn-memory``
measures the RetinaNet training step with the literal attention formula
(``fused_attn=False``) and with the fused strip-attention kernel. Every dense
measurement runs in a fresh child process, so "peak RSS" is that run's own
(CPU); on GPU it is ``torch.cuda.max_memory_allocated``.

Examples (CPU numbers are only comparable at the same thread count on a quiet
machine; rerun there for reportable figures)::

    python tools/analysis/benchmark.py --variants t --batch 16 --threads 2 --onnx --compile
    python tools/analysis/benchmark.py --variants mini t xs s m --timm efficientformer_l1 \
        fastvit_t12 repvit_m1_1 starnet_s4 pvt_v2_b0 pvt_v2_b1 efficientvit_m5
    python tools/analysis/benchmark.py --no-cls --dense --train --attn-memory --dense-variant s
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
from s2aformer_mm.complexity import count_macs
from s2aformer_mm.runtime import tune_cpu_allocator
from s2aformer_mm.deploy import (ClassifierLogits, build_model_from_config, export_onnx,
                                 onnxruntime_session, switch_to_deploy)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLS_CONFIG = os.path.join(REPO, 'configs', 'mmpretrain', 's2aformer_{}_4xb256_in1k.py')
DENSE = {  # task -> (config pattern, input H, W)
    'semantic-fpn': ('configs/mmseg/fpn_s2aformer_{}_ade20k.py', 512, 512),
    'retinanet': ('configs/mmdet/retinanet_s2aformer_{}_fpn_1x_coco.py', 800, 1333),
    'mask-rcnn': ('configs/mmdet/mask-rcnn_s2aformer_{}_fpn_1x_coco.py', 800, 1333),
}


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
        found[f'matmul {n}^3'] = 2 * n ** 3 / median_time(lambda: a @ b, 2, rounds, device)
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
        model = build_timm(name)
        macs = macs_of(model, shape)
        entries.append((name, 'timm (reparam)', model, macs, 'timm'))
        if args.onnx:
            entries.append((name, 'timm+onnxruntime', model, macs, 'timm'))
    tmp = tempfile.mkdtemp(prefix='s2a_bench_')
    for name, form, net, macs, source in entries:
        net = net.to(device).eval()
        extra = ''
        if form.endswith('onnxruntime'):
            if device.type != 'cpu':
                continue
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
                run = torch.compile(net)
                t0 = time.time()
                with torch.inference_mode():
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
            gemm_fraction=flops / peak if flops else None, note=extra or source))
        print(f'  {name:22s} {form:20s} {t * 1e3:9.1f} ms  {ips:8.1f} img/s', flush=True)


# --------------------------------------------------------------------------- dense (child)
def _det_inputs(model, batch, h, w, with_mask):
    from mmdet.testing import demo_mm_inputs
    data = demo_mm_inputs(batch, [[3, h, w]] * batch, num_items=[5] * batch, with_mask=with_mask)
    return model.data_preprocessor(data, True)


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
    if spec['tune_alloc']:
        tune_cpu_allocator()
    torch.set_num_threads(spec['threads'])
    device = torch.device(spec['device'])
    cfg_path, h, w = DENSE[spec['task']]
    from mmengine.config import Config
    cfg = Config.fromfile(os.path.join(REPO, cfg_path.format(spec['variant'])))
    cfg.model.backbone.pop('init_cfg', None)
    cfg.model.backbone['fused_attn'] = spec['fused']
    if device.type == 'cpu':  # SyncBN (mmseg bases) needs a GPU
        cfg.model = _no_syncbn(cfg.model)
    model = build_model_from_config(cfg).to(device)
    batch = spec['batch']
    if spec['task'] == 'semantic-fpn':
        data = _seg_inputs(model, batch, h, w)
        data = model.data_preprocessor(data, spec['train'])
    else:
        data = _det_inputs(model, batch, h, w, spec['task'] == 'mask-rcnn')
    data = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in data.items()}
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec['amp'])
    if spec['train']:
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def fn():
            with amp:
                losses = model(**data, mode='loss')
            loss = sum(v.sum() if torch.is_tensor(v) else sum(v) for k, v in losses.items()
                       if 'loss' in k)
            opt.zero_grad()
            loss.backward()
            opt.step()
    else:
        if spec['deploy']:
            switch_to_deploy(model)
        model.eval()

        def fn():
            with torch.inference_mode(), amp:
                return model(data['inputs'], data['data_samples'], mode='tensor')
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    t = median_time(fn, spec['warmup'], spec['rounds'], device)
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == 'cuda'
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print('RESULT ' + json.dumps(dict(median_ms=t * 1e3, peak_mib=peak, base_mib=base_rss)))


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
    _, h, w = DENSE[spec['task']]
    rows.append(dict(model=f"{spec['task']}-s2aformer-{spec['variant']}", form=label,
                     device=spec['device'], threads=spec['threads'], batch=spec['batch'],
                     shape=[h, w], median_ms=res['median_ms'], peak_mib=res['peak_mib'],
                     model_mib=res['base_mib'], amp=spec['amp']))
    print(f"  {rows[-1]['model']:30s} {label:34s} {res['median_ms']:9.1f} ms  "
          f"peak {res['peak_mib']:8.0f} MiB (after build {res['base_mib']:.0f})", flush=True)


def bench_dense(args, device, rows):
    base = dict(variant=args.dense_variant, device=device.type, threads=args.threads,
                warmup=1, rounds=args.dense_rounds, amp=False, fused=True, deploy=False,
                tune_alloc=not args.default_allocator)
    if args.dense:
        for task in args.dense_tasks:
            for deploy in (False, True):
                spec = dict(base, task=task, train=False, batch=1, deploy=deploy)
                run_child(spec, rows, 'inference ' + ('deploy' if deploy else 'train-form eval'))
    if args.train:
        for task, batch in (('semantic-fpn', 2), ('retinanet', 1)):
            spec = dict(base, task=task, train=True, batch=batch, amp=args.amp)
            run_child(spec, rows, 'train step' + (' bf16' if args.amp else ''))
    if args.attn_memory:
        for fused in (False, True):
            spec = dict(base, task='retinanet', train=True, batch=1, fused=fused)
            run_child(spec, rows, 'train step, attn ' + ('strip kernel' if fused else 'formula'))


# --------------------------------------------------------------------------- main
def print_table(rows, peak):
    print(f'\nfp32 GEMM: {peak / 1e9:.1f} GFLOP/s (best of the GEMMs above, medians)')
    cls = [r for r in rows if 'images_per_s' in r]
    if cls:
        print(f"\n{'model':22s} {'form':20s} {'batch':>5s} {'res':>8s} {'thr':>3s} {'ms':>9s} "
              f"{'img/s':>8s} {'GMACs':>6s} {'GFLOP/s':>8s} {'%GEMM':>6s}  note")
        for r in cls:
            g = f"{r['gmacs']:.3f}" if r['gmacs'] else '-'
            a = f"{r['achieved_gflops']:.1f}" if r['achieved_gflops'] else '-'
            f = f"{100 * r['gemm_fraction']:.1f}" if r['gemm_fraction'] else '-'
            print(f"{r['model']:22s} {r['form']:20s} {r['batch']:5d} {'x'.join(map(str, r['shape'])):>8s} "
                  f"{r['threads']:3d} {r['median_ms']:9.1f} {r['images_per_s']:8.1f} {g:>6s} "
                  f"{a:>8s} {f:>6s}  {r['note']}")
    dense = [r for r in rows if 'peak_mib' in r]
    if dense:
        print(f"\n{'model':30s} {'measurement':34s} {'batch':>5s} {'res':>9s} {'thr':>3s} "
              f"{'ms':>9s} {'peak MiB':>9s} {'built MiB':>9s}")
        for r in dense:
            print(f"{r['model']:30s} {r['form']:34s} {r['batch']:5d} {'x'.join(map(str, r['shape'])):>9s} "
                  f"{r['threads']:3d} {r['median_ms']:9.1f} {r['peak_mib']:9.0f} {r['model_mib']:9.0f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--variants', nargs='*', default=['t'], choices=list(S2AFormer.arch_zoo))
    p.add_argument('--no-cls', action='store_true', help='skip the classifier benchmark')
    p.add_argument('--timm', nargs='*', default=[], metavar='NAME', help='timm models to compare')
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
    p.add_argument('--amp', action='store_true', help='bf16 autocast for --train')
    p.add_argument('--dense-variant', default='s', choices=list(S2AFormer.arch_zoo))
    p.add_argument('--dense-tasks', nargs='+', default=list(DENSE), choices=list(DENSE))
    p.add_argument('--dense-rounds', type=int, default=3)
    p.add_argument('--default-allocator', action='store_true',
                   help="keep glibc's malloc defaults (see s2aformer_mm/runtime.py)")
    p.add_argument('--json', help='also write the rows to this file')
    p.add_argument('--child', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))

    alloc = ("CPU allocator: glibc defaults (--default-allocator)" if args.default_allocator
             else tune_cpu_allocator())
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(alloc)
    print(f'torch {torch.__version__}, device {device}'
          + (f' ({torch.cuda.get_device_name()})' if device.type == 'cuda' else '')
          + f', {args.threads} threads (torch.set_num_threads), {os.cpu_count()} CPUs visible')
    peak, gemms = gemm_flops(device)
    print('fp32 GEMM: ' + ', '.join(f'{k} {v / 1e9:.1f}' for k, v in gemms.items())
          + f' GFLOP/s -> {peak / 1e9:.1f}')
    rows = []
    if not args.no_cls:
        bench_classifiers(args, device, peak, rows)
    bench_dense(args, device, rows)
    print_table(rows, peak)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(gemm_gflops=peak / 1e9, gemms={k: v / 1e9 for k, v in gemms.items()},
                           allocator=alloc, torch=torch.__version__, device=str(device),
                           threads=args.threads, rows=rows), f, indent=1)
        print(f'\nwrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
