"""mmengine's ``compile`` option, applied the way that trains correctly.

``tools/train.py`` takes the option out of the built Runner's config
(:func:`take_compile_option`; the copy saved in the work dir keeps it) and compiles
the networks' training forward only, not the losses or the optimizer step
(:func:`compile_model`); why, and
the torch 2.14.1 behaviour :func:`check_compile_backend` guards against, is in
``docs/deployment.md`` section 4.
"""
import copy
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner
from torch.nn import Module
from torch.utils.checkpoint import checkpoint

from .errors import UsageError


def take_compile_option(cfg: Config) -> Optional[dict]:
    """Take mmengine's ``compile`` option out of ``cfg`` (a Runner's, which
    ``Runner.train`` reads); :func:`compile_model` applies it.

    mmengine would compile ``model.train_step`` with the optimizer step, and a compiled
    ``AdamW.step`` at ``lr == 0`` (the end of the ADE20K schedule) writes NaN into
    parameters whose gradients were all zero (docs/deployment.md, section 4).
    """
    option = cfg.pop('compile', None)
    if option is None or option is False:
        return None
    if option is True:
        return {}
    if not isinstance(option, dict):
        raise TypeError(f'compile must be a bool or a dict of torch.compile arguments '
                        f'(e.g. compile=dict(backend="inductor")), got {option!r}')
    return dict(option)


def compile_model(runner: Runner, options: Optional[dict]) -> None:
    """``torch.compile`` the forward of the model's networks (backbone, neck, heads:
    every child module with parameters but the data preprocessor) while training.

    Not the optimizer step (:func:`take_compile_option`), and not the losses, whose
    code depends on the data and recompiled without end (docs/deployment.md, section
    4): the heads' ``loss`` methods call their compiled ``forward`` and compute the loss
    eagerly. A network whose own ``forward`` is not called in training (mmdet's RoI
    heads) is handed down to its sub-networks by :class:`CompileCalledForwards`.
    Validation and testing stay eager, as with mmengine.
    """
    if options is None:
        return
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    check_compile_backend(model, options)
    compiled = _compile_networks(model.named_children(), options,
                                 skip=('data_preprocessor', ))
    runner.register_hook(CompileCalledForwards(compiled, options), priority='VERY_LOW')
    print_log(f'torch.compile({options or ""}) applied to the training forward of '
              f'{", ".join(name for name, _ in compiled)} in {type(model).__name__} (the '
              f'losses and the optimizer step stay eager); the first iterations compile and '
              f'are slow.',
              logger='current')


def _compile_networks(named_modules, options: dict, skip=()) -> List[Tuple[str, Module]]:
    """Compile the forward of each named module that holds parameters; returns them."""
    compiled = []
    for name, module in named_modules:
        if name in skip or next(module.parameters(), None) is None:
            continue
        module.forward = CompiledWhileTraining(module, options)
        compiled.append((name, module))
    return compiled


class CompiledWhileTraining:
    """A module's ``forward``, compiled in training mode and eager otherwise.

    A deep copy of the module (an EMA copy, say) gets its own eager ``forward`` back;
    a copied closure would have kept calling the original module with its weights.
    """

    def __init__(self, module: torch.nn.Module, options: dict):
        self.module, self.eager = module, module.forward
        self.compiled = torch.compile(module.forward, **options)
        self.called_in_training = False

    def __call__(self, *args, **kwargs):
        if self.module.training:
            self.called_in_training = True
            return self.compiled(*args, **kwargs)
        return self.eager(*args, **kwargs)

    def __deepcopy__(self, memo):
        # copy.deepcopy registers the new module before copying its attributes.
        copied = memo.get(id(self.module)) or copy.deepcopy(self.module, memo)
        return type(copied).forward.__get__(copied)


class CompileCalledForwards(Hook):
    """After a training iteration, a compiled network whose ``forward`` was not called
    (mmdet's RoI heads run ``bbox_head`` / ``mask_head`` from ``loss``) goes back to
    eager and its sub-networks are compiled instead, until every compiled forward is
    one that training calls. Every rank takes the same decision (it depends on the
    model's code only)."""

    def __init__(self, compiled: List[Tuple[str, Module]], options: dict):
        self.watched, self.options = compiled, options

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        watched, self.watched = self.watched, []
        for name, module in watched:
            if vars(module)['forward'].called_in_training:
                continue
            del module.forward   # back to the class's eager forward
            children = _compile_networks(
                ((f'{name}.{child}', sub) for child, sub in module.named_children()),
                self.options)
            self.watched += children
            print_log(f'torch.compile: the training step does not call the forward of {name}; '
                      f'compiling {", ".join(n for n, _ in children) or "nothing"} instead.',
                      logger='current')


def _checkpointed_random_layers(model: torch.nn.Module) -> List[str]:
    """Dropout / drop-path layers inside modules that recompute in backward (``with_cp``
    True, or ``'auto'`` for a model on the CPU)."""
    cpu = next(model.parameters()).device.type == 'cpu'
    recomputing, found = [], []
    for name, m in model.named_modules():  # parents come before their children
        with_cp = getattr(m, 'with_cp', False)
        if with_cp is True or (with_cp == 'auto' and cpu):
            recomputing.append(name + '.')
        p = (m.p if isinstance(m, torch.nn.modules.dropout._DropoutNd)
             else getattr(m, 'drop_prob', 0) or getattr(m, 'attn_drop', 0))
        if (isinstance(p, float) and p > 0
                and any((name + '.').startswith(r) for r in recomputing)):
            found.append(name)
    return found


def _eager_backend_redraws_in_recompute() -> bool:
    """Whether dynamo's ``eager`` backend re-runs a checkpointed dropout with new random
    numbers in backward (torch 2.14.1 does; ``aot_eager`` and inductor do not): the
    gradient of ``sum(dropout(W x))`` must be the one of the forward's own mask."""
    with torch.random.fork_rng():   # leave the run's random stream untouched
        torch.manual_seed(0)
        lin, x = torch.nn.Linear(8, 8), torch.randn(16, 8)

        def f(t):
            return checkpoint(lambda u: F.dropout(lin(u), 0.5, True), t, use_reentrant=False)

        y = torch.compile(f, backend='eager')(x)
        y.sum().backward()
    return not torch.allclose(lin.weight.grad, 2 * (y != 0).float().t() @ x)


def check_compile_backend(model: torch.nn.Module, options: dict) -> None:
    """Refuse ``backend='eager'`` where it computes wrong gradients: with ``with_cp``,
    drop path / dropout in the recomputed blocks would draw other masks in backward
    than in forward (checked by running a small case, see
    :func:`_eager_backend_redraws_in_recompute`)."""
    if options.get('backend') != 'eager':
        return
    layers = _checkpointed_random_layers(model)
    if layers and _eager_backend_redraws_in_recompute():
        names = ', '.join(layers[:3]) + (' ...' if len(layers) > 3 else '')
        raise UsageError(
            f"compile=dict(backend='eager') with with_cp would train with wrong gradients: "
            f'in torch {torch.__version__} that backend re-runs checkpointed blocks with new '
            f'random numbers in backward, so the masks of {len(layers)} dropout / drop-path '
            f"layers ({names}) would differ from the forward's. Use backend='aot_eager' or "
            f"'inductor' (the default), or with_cp=False "
            f'(--cfg-options model.backbone.with_cp=False).')
