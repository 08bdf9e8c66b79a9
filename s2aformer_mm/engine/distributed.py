"""Process-group set-up and a DDP wrapper that work with and without CUDA.

mmengine 0.10.7 assumes GPUs in its distributed path: ``init_dist`` always
calls ``torch.cuda.set_device`` and defaults to nccl, ``Runner.wrap_model``
always passes ``device_ids=[LOCAL_RANK]`` and keeps SyncBN when distributed.

* :func:`init_distributed` (called by ``tools/train.py`` / ``tools/test.py`` before
  the Runner exists, which then skips ``init_dist``) picks the backend from the
  machine when the run starts: the config's, unless it is nccl without CUDA (gloo).
  Nothing is written back into the config.
* :class:`DeviceAwareDistributedDataParallel`, named by the task configs'
  ``model_wrapper_cfg`` (``configs/_base_/s2aformer_runtime.py``), decides when it is
  built: mmengine's DDP on a GPU, DDP without ``device_ids`` and without SyncBN on
  the CPU. So one config (and its copy in a work dir) runs on either machine.
"""
import gc
import os
import subprocess
from datetime import timedelta

import torch
import torch.distributed as dist
from mmengine.dist import init_dist
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel, is_model_wrapper, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


def _env_from_scheduler(launcher: str) -> None:
    """Map slurm / OpenMPI variables to the ``env://`` ones (CPU path only)."""
    if launcher == 'slurm':
        env = dict(RANK='SLURM_PROCID', WORLD_SIZE='SLURM_NTASKS', LOCAL_RANK='SLURM_LOCALID')
        if 'MASTER_ADDR' not in os.environ:
            nodes = os.environ['SLURM_NODELIST']
            os.environ['MASTER_ADDR'] = subprocess.getoutput(
                f'scontrol show hostname {nodes} | head -n1')
    else:  # mpi
        env = dict(RANK='OMPI_COMM_WORLD_RANK', WORLD_SIZE='OMPI_COMM_WORLD_SIZE',
                   LOCAL_RANK='OMPI_COMM_WORLD_LOCAL_RANK')
    for key, src in env.items():
        if src not in os.environ:
            starter = 'srun (tools/slurm_train.sh)' if launcher == 'slurm' else 'mpirun'
            raise RuntimeError(f'--launcher {launcher} expects ${src} to be set; start the job '
                               f'with {starter}.')
        os.environ[key] = os.environ[src]
    os.environ.setdefault('MASTER_PORT', '29500')


def launch_rank(launcher: str) -> int:
    """The rank ``launcher`` gives this process, known before the process group exists."""
    var = dict(pytorch='RANK', slurm='SLURM_PROCID', mpi='OMPI_COMM_WORLD_RANK').get(launcher)
    return int(os.environ.get(var, 0)) if var else 0


def init_distributed(launcher: str, backend: str = None, timeout: int = 1800) -> str:
    """Initialise the default process group for ``launcher``; return the backend.

    ``backend`` is the config's ``env_cfg.dist_cfg.backend``: None picks nccl with
    CUDA and gloo without, and nccl (the OpenMMLab bases' choice) becomes gloo on a
    machine without CUDA (logged). On CUDA, slurm/mpi launches are delegated to
    mmengine's ``init_dist`` unchanged.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f'Unknown launcher {launcher!r}; choose one of {LAUNCHERS}.')
    if launcher == 'none' or dist.is_initialized():
        return dist.get_backend() if dist.is_initialized() else 'none'
    cuda = torch.cuda.is_available()
    if backend == 'nccl' and not cuda:
        print_log('env_cfg.dist_cfg.backend=nccl needs CUDA, unavailable here: using gloo.',
                  logger='current')
    if backend is None or (backend == 'nccl' and not cuda):
        backend = 'nccl' if cuda else 'gloo'
    if cuda and launcher != 'pytorch':
        init_dist(launcher, backend=backend)
        return backend
    if launcher != 'pytorch':
        _env_from_scheduler(launcher)
    for key in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        if key not in os.environ:
            raise RuntimeError(f'--launcher {launcher}: ${key} is not set. Start the job with '
                               f'torchrun (tools/dist_train.sh) or use --launcher none.')
    if cuda:
        # Only with CUDA: torch.cuda.set_device fails on CPU-only machines.
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout))
    return backend


class ProcessGroup:
    """``with ProcessGroup(launcher, backend) as group:`` -- the process group of a
    tool's run: initialised on entry (:func:`init_distributed`), destroyed on exit
    (:func:`destroy_distributed`; without the barrier after an error). Set
    ``group.runner`` once built, so that its DDP wrapper is released first."""

    def __init__(self, launcher: str, backend: str = None):
        self.launcher, self.backend, self.runner = launcher, backend, None

    def __enter__(self) -> 'ProcessGroup':
        self.backend = init_distributed(self.launcher, self.backend)
        if self.launcher != 'none':
            rank, world = dist.get_rank(), dist.get_world_size()
            print(f'[s2aformer] rank {rank}/{world}: process group ready (backend '
                  f'{self.backend}, {"cuda" if torch.cuda.is_available() else "cpu"})',
                  flush=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        destroy_distributed(self.runner, barrier=exc_type is None)


def destroy_distributed(runner=None, barrier: bool = True) -> None:
    """Tear the process group down, and gloo's threads with it, before Python exits.

    ``dist.destroy_process_group()`` alone does not end the group while DDP's
    reducer still holds it: it then lives until interpreter shutdown, where freeing
    it aborted about 1 gloo run in 100 after the job had finished ("terminate called
    without an active exception", SIGABRT, so torchrun reported a failed job). So the
    runner's DDP wrapper is dropped and collected first; the group's worker threads
    are then joined here.

    ``barrier=False`` after an error: the other ranks may never reach a barrier,
    and this rank must exit so that torchrun stops the job.
    """
    if runner is not None and is_model_wrapper(runner.model):
        runner.model = runner.model.module
        gc.collect()  # DDP's reducer sits in reference cycles
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


#: model wrappers that run on the CPU (tools/train.py refuses others there up front)
CPU_CAPABLE_WRAPPERS = ('DeviceAwareDistributedDataParallel',
                        'mmengine.DeviceAwareDistributedDataParallel')


@MODEL_WRAPPERS.register_module()
class DeviceAwareDistributedDataParallel(MMDistributedDataParallel):
    """:class:`MMDistributedDataParallel` for a module on a GPU or on the CPU.

    On a GPU it is mmengine's wrapper unchanged. On the CPU (gloo), the
    ``device_ids=[LOCAL_RANK]`` that ``Runner.wrap_model`` passes is dropped (DDP
    rejects it for CPU modules) and SyncBN (from OpenMMLab base configs; it needs
    CUDA) is reverted to BN before wrapping. ``broadcast_buffers`` defaults to False,
    as in mmengine's default wrapper.

    Args:
        module (nn.Module): The model to wrap (on its device already).
        detect_anomalous_params (bool): mmengine's check for parameters that do not
            take part in the loss. Defaults to False.
        **kwargs: ``torch.nn.parallel.DistributedDataParallel`` arguments.
    """

    def __init__(self, module, detect_anomalous_params: bool = False, **kwargs):
        if next(module.parameters()).device.type == 'cpu':
            kwargs.pop('device_ids', None)
            kwargs.pop('output_device', None)
            module = revert_sync_batchnorm(module)
        kwargs.setdefault('broadcast_buffers', False)
        super().__init__(module=module, detect_anomalous_params=detect_anomalous_params,
                         **kwargs)
