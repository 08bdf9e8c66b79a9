"""Checkpoints that survive a kill: safe ordering, atomic writes, robust resume.

mmengine's ``CheckpointHook`` (0.10.7) deletes the oldest checkpoint *before*
writing the new one and writes ``last_checkpoint`` in place, so with
``max_keep_ckpts=1`` a job killed while saving is left with no checkpoint at
all, and a kill at the wrong instant leaves an empty ``last_checkpoint`` that
makes ``--resume`` start from scratch. Here:

* :class:`SafeCheckpointHook` saves first (atomically, through the
  ``atomic_local`` backend of :mod:`s2aformer_mm.checkpoint`), then points
  ``last_checkpoint`` at it (atomically), and only then removes old files;
* when a run resumes without a path (``--resume`` of any launcher's
  ``tools/train.py``, i.e. ``resume=True, load_from=None``), the hook picks the
  newest checkpoint that actually loads (:func:`find_resumable_checkpoint`), falling
  back past an empty pointer or a corrupt file, instead of mmengine's pointer.

The task configs name the hook and the backend (``configs/_base_/s2aformer_runtime.py``),
so every launcher that reads them gets both.
"""
import glob
import logging
import os
import os.path as osp
import re
from typing import Optional

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from ..checkpoint import AtomicLocalBackend, UnsafeCheckpointError, safe_load


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """``CheckpointHook`` that never leaves the work dir without a usable checkpoint,
    and resumes from the newest one that loads (the module docstring says how).

    Args:
        **kwargs: :class:`mmengine.hooks.CheckpointHook` arguments; pair it with
            ``backend_args=dict(backend='atomic_local')`` for atomic writes.
    """

    def before_run(self, runner) -> None:
        # Runner.train calls before_run just before load_or_resume, which reads these two
        # (mmengine 0.10.7 has no public setter); a resume PATH is left alone.
        if not (runner._resume and runner._load_from is None):
            return
        remove_stale_temp_files(runner.work_dir)
        latest = find_resumable_checkpoint(runner.work_dir)
        if latest is None:
            print_log(f'resume: no checkpoint in {runner.work_dir}; starting at iteration 0.',
                      logger='current', level=logging.WARNING)
        else:
            print_log(f'resume: newest loadable checkpoint is {latest}', logger='current')
        runner._resume, runner._load_from = latest is not None, latest

    def _save_checkpoint_with_step(self, runner, step, meta):
        # Same bookkeeping as mmengine (so the saved keep_ckpt_ids are right), but the
        # file that falls out of the window is removed only after the new one exists.
        stale = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                stale = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir, ckpt_filename, self.file_client_args,
            save_optimizer=self.save_optimizer, save_param_scheduler=self.save_param_scheduler,
            meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        AtomicLocalBackend._atomic_write(str(self.last_ckpt).encode(),
                                         osp.join(runner.work_dir, 'last_checkpoint'))
        if stale is not None:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(stale))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # deepspeed-style checkpoint directories
                self.file_backend.rmtree(path)


_STEP = re.compile(r'(?:iter|epoch)_(\d+)\.pth$')


def remove_stale_temp_files(work_dir: str) -> None:
    """Delete ``.*.pth.*.tmp`` files left by a job killed while saving (on rank 0;
    the other ranks may look at the same directory)."""
    if not is_main_process():
        return
    for tmp in glob.glob(osp.join(work_dir, '.*.pth.*.tmp')):
        os.unlink(tmp)
        print_log(f'removed {tmp}, left by a run killed while saving', logger='current')


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """The newest checkpoint in ``work_dir`` that loads: the ``last_checkpoint``
    target first, then ``iter_*.pth`` / ``epoch_*.pth`` newest first. Unreadable
    candidates are skipped with a warning; an unsafe one stops the run."""
    candidates = []
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            target = f.read().strip()
        if target:
            candidates.append(target)
    found = [p for p in glob.glob(osp.join(work_dir, '*.pth')) if _STEP.search(p)]
    candidates += sorted(found, key=lambda p: int(_STEP.search(p).group(1)), reverse=True)
    seen = set()
    for path in candidates:
        if path in seen:
            continue
        seen.add(path)
        try:
            safe_load(path)
        except UnsafeCheckpointError:
            raise
        except (FileNotFoundError, RuntimeError) as e:
            print_log(f'resume: skipping {path}: {e}', logger='current', level=logging.WARNING)
            continue
        return path
    return None
