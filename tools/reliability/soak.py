"""Soak test: train the demo configuration for a while with periodic SIGKILLs and
``--resume``s, then check that nothing was lost (not part of CI).

    python tools/reliability/soak.py [--minutes 30] [--config configs/demo/...py]
                                     [--work-dir work_dirs/soak] [--kill-after 20 60]

1. calibrate: a short run measures iterations per second; ``max_iters`` is chosen so
   that the interrupted run takes about half of ``--minutes`` and the uninterrupted
   reference run the other half;
2. interrupted run: ``tools/train.py`` is started (with ``--resume`` once a checkpoint
   exists) and SIGKILLed after a random delay, every third kill while a checkpoint is
   being written (a ``.iter_N.pth.*.tmp`` file of the atomic backend exists); repeated
   until a run reaches ``max_iters`` by itself;
3. reference run: the same configuration, uninterrupted;
4. checks: the final iteration was reached; every iteration 1..max_iters was logged;
   an iteration repeated after a resume has bitwise the loss it had before the kill
   (continuity) and every loss equals the reference's; the final weights equal the
   reference's bit for bit; the validation metrics are equal.

Deterministic settings: ``randomness=dict(seed=0, deterministic=True)``, no data
workers, one OpenMP thread, no decode-head dropout (the soak isolates kills and
checkpoint writes; resuming with dropout and drop path is bitwise exact through
``IterationSeedHook`` and tested in ``tests/test_reliability.py``),
``log_processor.window_size=1`` (the logged loss is the iteration's own).
Exit status 0 when every check passes, 1 otherwise, 2 for a ``--max-iters`` that
ends before the warm-up plus two checkpoints.
"""
import argparse
import json
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

import torch
from mmengine.config import Config

from s2aformer_mm.checkpoint import safe_load
from s2aformer_mm.datasets import generate_ade20k
from s2aformer_mm.testing import ProcessJob

REPO = Path(__file__).resolve().parents[2]
DEMO = 'configs/demo/fpn_s2aformer_mini_ade20k_demo.py'
ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--minutes', type=float, default=30, help='total wall time to aim for')
    p.add_argument('--config', default=DEMO)
    p.add_argument('--work-dir', default='work_dirs/soak')
    p.add_argument('--data-root', help='ADE20K-format data (default: generated in the work dir)')
    p.add_argument('--kill-after', type=float, nargs=2, default=(20, 60), metavar=('MIN', 'MAX'),
                   help='seconds between a (re)start and its SIGKILL')
    p.add_argument('--ckpt-interval', type=int, default=5)
    p.add_argument('--max-keep-ckpts', type=int, default=3,
                   help='checkpoints kept (-1: all). 1 is safe and the hardest case: the '
                   "tools' SafeCheckpointHook deletes the oldest checkpoint only after the "
                   'next one is written, so a kill while saving leaves the previous one')
    p.add_argument('--max-iters', type=int, help='skip calibration and use this')
    p.add_argument('--seed', type=int, default=0, help='seed of the kill schedule')
    return p.parse_args()


def opts(data_root, max_iters, ckpt, keep):
    o = []
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        o += [f'{loader}.dataset.data_root={data_root}', f'{loader}.num_workers=0',
              f'{loader}.persistent_workers=False']
    return o + [
        'randomness.seed=0', 'randomness.deterministic=True', 'log_processor.window_size=1',
        'default_hooks.logger.interval=1', 'model.decode_head.dropout_ratio=0.0',
        f'train_cfg.max_iters={max_iters}', f'train_cfg.val_interval={max_iters}',
        f'param_scheduler.1.end={max_iters}',
        f'default_hooks.checkpoint.interval={ckpt}',
        f'default_hooks.checkpoint.max_keep_ckpts={keep}',
        'default_hooks.checkpoint.backend_args.backend=atomic_local']


def segments(work):
    """Per run segment (oldest first): ({iter: loss}, [val metrics])."""
    out = []
    for f in sorted(Path(work).glob('2*/vis_data/scalars.json')):
        recs = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        out.append(({r['iter']: r['loss'] for r in recs if 'loss' in r and 'iter' in r},
                    [{k: r[k] for k in ('aAcc', 'mIoU', 'mAcc')} for r in recs if 'mIoU' in r]))
    return out


def train_cmd(cfg, work, o, resume):
    return [sys.executable, 'tools/train.py', cfg, '--work-dir', str(work),
            *(['--resume'] if resume else []), '--cfg-options', *o]


def tmp_files(work):
    """Temporary files of the atomic backend; a SIGKILL while saving leaves one behind."""
    return {n for n in os.listdir(work) if n.startswith('.iter_') and n.endswith('.tmp')} \
        if work.is_dir() else set()


def main():
    a = parse_args()
    # The soak moves the end of the config's second scheduler (after warm-up) to max_iters.
    warmup_end = Config.fromfile(str(REPO / a.config)).param_scheduler[1]['begin']
    min_iters = warmup_end + 2 * a.ckpt_interval
    if a.max_iters and a.max_iters < min_iters:
        print(f'[soak] ERROR: --max-iters {a.max_iters} ends before the warm-up of {a.config} '
              f'({warmup_end} iterations) plus two checkpoints ({a.ckpt_interval} each); use '
              f'--max-iters {min_iters} or more.')
        return 2
    rng = random.Random(a.seed)
    t_start = time.time()
    root = Path(a.work_dir).resolve()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    data = a.data_root or str(root / 'data')
    if not a.data_root:
        generate_ade20k(data, num_train=64, num_val=8, size=128)
    log = root / 'soak.log'

    max_iters = a.max_iters
    if not max_iters:  # calibration: 25 s of training
        work = root / 'calibrate'
        job = ProcessJob(train_cmd(a.config, work, opts(data, 100000, 100000, 1), False),
                         REPO, ENV, log)
        t0 = None
        while job.proc.poll() is None:
            m = re.findall(r'Iter\(train\) \[\s*(\d+)/', job.out)
            if m and t0 is None:
                t0, i0 = time.time(), int(m[-1])
            if t0 and time.time() - t0 > 25:
                i1 = int(m[-1])
                break
            time.sleep(0.2)
        if t0 is None or job.proc.poll() is not None:
            print(f'[soak] FAIL: calibration run did not train:\n{job.out[-3000:]}')
            return 1
        rate = (i1 - i0) / (time.time() - t0)
        job.kill()
        remaining = a.minutes * 60 - (time.time() - t_start)
        # interrupted (with restarts of ~10 s each) and reference runs share the time
        max_iters = max(min_iters, int(rate * remaining * 0.38))
        print(f'[soak] calibration: {rate:.2f} it/s -> max_iters {max_iters}', flush=True)

    o = opts(data, max_iters, a.ckpt_interval, a.max_keep_ckpts)
    work = root / 'interrupted'
    kills, save_kills, starts = 0, 0, 0
    t_int = time.time()
    while True:
        resume = (work / 'last_checkpoint').is_file()
        job = ProcessJob(train_cmd(a.config, work, o, resume), REPO, ENV, log)
        starts += 1
        during_save = kills % 3 == 2
        stale = tmp_files(work)  # left by earlier kills while saving: not a save in progress
        deadline = time.time() + rng.uniform(*a.kill_after)
        while job.proc.poll() is None:
            if during_save and tmp_files(work) - stale:
                break
            if not during_save and time.time() > deadline:
                break
            time.sleep(0.0005 if during_save else 0.05)
        if job.proc.poll() is not None:
            job.kill()
            if job.proc.returncode != 0:
                print(f'[soak] FAIL: run {starts} exited with {job.proc.returncode}:\n'
                      f'{job.out[-3000:]}', flush=True)
                return 1
            break  # finished by itself
        job.kill()
        kills += 1
        save_kills += during_save
        done = re.findall(r'Iter\(train\) \[\s*(\d+)/', job.out)
        print(f'[soak] SIGKILL {kills}{" (while saving)" if during_save else ""} after '
              f'iteration {done[-1] if done else "-"}; resuming', flush=True)
    t_int = time.time() - t_int

    t_ref = time.time()
    ref = root / 'reference'
    job = ProcessJob(train_cmd(a.config, ref, o, False), REPO, ENV, log)
    job.finish(timeout=None)
    t_ref = time.time() - t_ref
    if job.proc.returncode != 0:
        print(f'[soak] FAIL: reference run failed:\n{job.out[-3000:]}')
        return 1

    # ---------------------------------------------------------------- checks
    (ref_losses, ref_metrics), = segments(ref)
    segs = segments(work)
    seen, repeated, discontinuous = {}, 0, []
    for losses, _ in segs:
        for it, loss in losses.items():
            if it in seen:
                repeated += 1
                if seen[it] != loss:
                    discontinuous.append((it, seen[it], loss))
            seen[it] = loss
    missing = sorted(set(range(1, max_iters + 1)) - set(seen))
    differ_ref = [i for i in ref_losses if seen.get(i) != ref_losses[i]]
    final = work / f'iter_{max_iters}.pth'
    wa, wb = safe_load(str(final))['state_dict'], safe_load(str(ref / final.name))['state_dict']
    bad = [k for k in wb if not torch.equal(wa[k], wb[k])]
    checks = {
        'final iteration reached': final.is_file() and safe_load(str(final))['meta']['iter'] ==
        max_iters,
        'every iteration logged (none lost)': not missing,
        'repeated iterations continuous (same loss)': not discontinuous,
        'losses equal the uninterrupted reference': not differ_ref,
        'final weights bitwise equal to the reference': not bad,
        'validation metrics equal': segs[-1][1] == ref_metrics,
    }
    print('\n[soak] ======================== summary ========================')
    print(f'config {a.config}, max_iters {max_iters}, checkpoint every {a.ckpt_interval}, '
          f'keep {a.max_keep_ckpts}')
    print(f'interrupted run: {starts} starts, {kills} SIGKILLs ({save_kills} while saving), '
          f'{repeated} iterations repeated after resumes, {t_int:.0f}s')
    print(f'reference run: {t_ref:.0f}s; total {time.time() - t_start:.0f}s')
    print(f'final metrics: {segs[-1][1]} (reference {ref_metrics})')
    for name, ok in checks.items():
        print(f'  [{"PASS" if ok else "FAIL"}] {name}')
    if missing:
        print(f'  missing iterations: {missing[:20]}')
    if discontinuous:
        print(f'  discontinuities: {discontinuous[:5]}')
    if differ_ref:
        print(f'  iterations differing from the reference: {differ_ref[:20]}')
    if bad:
        print(f'  {len(bad)} tensors differ, e.g. {bad[:3]}')
    print(f'log: {log}')
    return 0 if all(checks.values()) else 1


if __name__ == '__main__':
    sys.exit(main())
