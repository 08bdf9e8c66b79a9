"""Safe checkpoint loading under torch's ``weights_only=True`` default.

torch >= 2.6 unpickles checkpoints with ``weights_only=True``; mmengine 0.10.7
calls plain ``torch.load``, and Runner checkpoints carry numpy arrays/scalars and
``HistoryBuffer`` objects (``message_hub``). Rather than turning ``weights_only``
off (which lets a checkpoint execute code), :func:`register_safe_globals` adds
exactly the globals those checkpoints need to torch's allowlist.

``HistoryBuffer`` pickles its statistics methods as ``getattr(HistoryBuffer,
'min')``. Allowing ``builtins.getattr`` itself would let a checkpoint fetch any
attribute of any allowed object, so the name ``builtins.getattr`` is bound to
:func:`_restricted_getattr`, which only resolves public methods of
``HistoryBuffer``.

An empty bytes object (the data of any empty numpy array, e.g. an empty
``HistoryBuffer``) is pickled by ``torch.save`` (protocol 2) as ``bytes()``. The name
``builtins.bytes`` is bound to :func:`_restricted_bytes`, which builds ``b''`` (or
copies bytes already in the file) but refuses ``bytes(N)``: an integer N chosen by
the file would allocate N bytes.
"""
import os
import re
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Union

import numpy as np
import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.logging import HistoryBuffer, print_log

_HB_METHODS = frozenset(
    name for name in dir(HistoryBuffer)
    if not name.startswith('_') and callable(getattr(HistoryBuffer, name)))


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be used; the message names the file and what to do."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds objects outside the allowlist (possible code execution)."""


class NotACheckpointError(CheckpointError):
    """The file is not in either format ``torch.save`` writes (a wrong path, say)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path names no file."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file is damaged, e.g. truncated by a job killed while saving."""


class CheckpointMismatchError(KeyError):
    """A checkpoint's keys or shapes do not fit the model (another arch/variant?)."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ''


def _restricted_getattr(obj, name, *default):
    if obj is HistoryBuffer and name in _HB_METHODS:
        return getattr(obj, name)
    raise UnsafeCheckpointError(
        f'checkpoint asks for getattr({obj!r}, {name!r}); only HistoryBuffer statistics '
        f'methods are allowed')


def _restricted_bytes(*args):
    """``builtins.bytes`` for checkpoints: ``bytes()`` (how protocol <= 2 pickles
    ``b''``) or a copy of a bytes object; never ``bytes(N)``, which would allocate
    N zero bytes that the file chooses."""
    if not args:
        return b''
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytes(args[0])
    if len(args) == 1 and isinstance(args[0], int):
        n = args[0]
        size = f'{n}' if n.bit_length() <= 64 else f'<{n.bit_length()}-bit integer>'
        raise UnsafeCheckpointError(
            f'checkpoint asks for bytes({size}), which would allocate that many zero bytes '
            f'(a size chosen by the file); only bytes() and copies of bytes are allowed')
    raise UnsafeCheckpointError(
        f'checkpoint asks for bytes({", ".join(type(a).__name__ for a in args)}); '
        f'only bytes() and copies of bytes are allowed')


def _numpy_globals() -> List:
    core = getattr(np, '_core', None) or np.core  # numpy 2.x / 1.x spelling
    names = [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype]
    dtypes = getattr(np, 'dtypes', None)  # numpy >= 1.25
    if dtypes is not None:
        names += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType')]
    return names


def safe_globals() -> List:
    """The allowlist: numpy containers, HistoryBuffer, a restricted getattr and a
    restricted bytes."""
    return [HistoryBuffer, *_numpy_globals(), (_restricted_getattr, 'builtins.getattr'),
            (_restricted_bytes, 'builtins.bytes')]


_registered = False


def register_safe_globals() -> None:
    """Add :func:`safe_globals` to torch's weights-only allowlist (idempotent).

    Called when ``s2aformer_mm`` is imported, i.e. by every config's
    ``custom_imports``, before the Runner loads ``load_from`` / ``resume`` /
    ``Pretrained`` checkpoints.
    """
    global _registered
    if not _registered:
        torch.serialization.add_safe_globals(safe_globals())
        _registered = True


def route_mmengine_local_loads() -> None:
    """Send mmengine's local checkpoint loading (``load_from``, ``resume``,
    ``Runner.load_checkpoint``, ``PretrainedInit``) through :func:`safe_load`, so
    those paths get the same allowlist and clear errors (idempotent).

    On both OpenMMLab lines. onedl-mmengine 0.10.12 has its own weights-only loading
    (``_safe_torch_load``), but it is not used: a file its allowlist refuses is loaded
    again with ``weights_only=False`` after a warning, which runs a code-executing
    pickle, and its allowlist holds the unrestricted ``builtins.getattr``. Its other
    schemes (``pavi://``, ``s3://``, a local ``open-mmlab://`` file) keep that fallback;
    ``http(s)://`` loads use ``torch.load``'s default ``weights_only=True`` on both lines.
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(
        prefixes='', force=True,
        loader=lambda filename, map_location: safe_load(os.path.expanduser(filename),
                                                        map_location or 'cpu'))


# torch.save writes a zip archive, or (legacy format) a pickle that opens with this
# number as a 10-byte LONG1; the pickle protocol header and frame come before it.
_ZIP_MAGIC = b'PK\x03\x04'
_LEGACY_MAGIC = b'\x8a\x0a' + torch.serialization.MAGIC_NUMBER.to_bytes(10, 'little')


def _not_torch_format(path: str):
    """Why ``path`` cannot be a ``torch.save`` file, or None if it may be one."""
    with open(path, 'rb') as f:
        head = f.read(32)
    if not head:
        return 'the file is empty'
    if head.startswith(_ZIP_MAGIC) or _LEGACY_MAGIC in head:
        return None
    return f'neither a zip archive nor a legacy torch.save pickle; it starts with {head[:16]!r}'


def safe_load(path: str, map_location='cpu'):
    """``torch.load`` with ``weights_only=True`` and our allowlist; clear errors."""
    register_safe_globals()
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f'Checkpoint file not found: {path!r}. Check the path.')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f'Refusing to load {path!r}: {e}') from None
    except (torch.serialization.pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        error = e
    # Only after a failed load, so any file torch can read is read as before. The
    # weights-only unpickler reports any byte it cannot parse as UnpicklingError, so
    # without this check a text file would be called unsafe.
    problem = _not_torch_format(path)
    if problem:
        raise NotACheckpointError(
            f'{path!r} is not a PyTorch checkpoint ({problem}). Check the path: checkpoints are '
            f'the .pth files written by torch.save (e.g. the tools\' iter_N.pth / epoch_N.pth).')
    if isinstance(error, torch.serialization.pickle.UnpicklingError):
        raise UnsafeCheckpointError(
            f'Refusing to load {path!r}: it contains objects outside the safe allowlist '
            f'(s2aformer_mm.checkpoint.safe_globals), which could execute code when unpickled. '
            f'Only load it with weights_only=False if you fully trust its origin.\n{error}')
    raise CorruptCheckpointError(
        f'Checkpoint {path!r} is corrupt or truncated and cannot be read ({error}). Re-download '
        f'or re-save it; for resuming, point --resume at an earlier checkpoint.')


#: ``meta`` flag of the deploy checkpoints that tools/deployment/fuse_checkpoint.py writes
DEPLOY_META_KEY = 's2aformer_deploy'


def is_deploy_checkpoint(ckpt) -> bool:
    """Whether a loaded checkpoint holds deploy-form weights (``meta.s2aformer_deploy``)."""
    meta = ckpt.get('meta') if isinstance(ckpt, dict) else None
    return isinstance(meta, dict) and bool(meta.get(DEPLOY_META_KEY))


def _training_form(ckpt, path: str):
    """``ckpt``, unless it is a deploy checkpoint: folded BN and merged heads rename
    the parameters, so every key would mismatch without saying why."""
    if is_deploy_checkpoint(ckpt):
        source = ckpt['meta'].get('source')
        source = f' ({source!r})' if source else ''
        raise CheckpointMismatchError(
            f'Checkpoint {path!r} is a deploy-form checkpoint (meta.s2aformer_deploy, written by '
            f'tools/deployment/fuse_checkpoint.py), which the training-form model cannot load. '
            f'Load it with s2aformer_mm.apis.load_deploy_model(CONFIG, CHECKPOINT), or use '
            f'the training checkpoint it was made from{source}.')
    return ckpt


def _state_dict(ckpt) -> Dict[str, torch.Tensor]:
    if isinstance(ckpt, dict):
        for key in ('state_dict', 'model'):
            if isinstance(ckpt.get(key), dict):
                return ckpt[key]
    return ckpt


def load_backbone_pretrained(module: torch.nn.Module, init_cfg: dict) -> None:
    """Load ``init_cfg=dict(type='Pretrained', checkpoint, prefix, strict=True)``.

    Keys are taken from the checkpoint's ``state_dict`` (or ``model``), the
    ``prefix`` (e.g. ``'backbone.'``) is stripped, an EMA copy
    (``ema_state_dict`` / ``module.``) is not needed. Backbone keys absent from
    the checkpoint, or present with another shape, raise ``KeyError`` naming them
    unless ``strict=False`` -- partial loading must be explicit. Layers that a
    classifier checkpoint cannot have (``out_norm*``, dense-only) are allowed to
    be missing and are logged.
    """
    unknown = set(init_cfg) - {'type', 'checkpoint', 'prefix', 'map_location', 'strict'}
    if unknown:
        raise ValueError(f'Unknown keys {sorted(unknown)} in Pretrained init_cfg {init_cfg}')
    path = init_cfg.get('checkpoint')
    if not path:
        raise ValueError('Pretrained init_cfg needs checkpoint=<path to .pth>')
    prefix = init_cfg.get('prefix') or ''
    strict = init_cfg.get('strict', True)
    state = checkpoint_state_dict(path, init_cfg.get('map_location', 'cpu'))
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointMismatchError(
                f'No key in {path!r} starts with prefix {prefix!r}; is it a checkpoint of a '
                f'model with a backbone? (use prefix="" for a bare backbone file)')
    own = module.state_dict()
    optional = re.compile(r'^out_norm\d+\.')
    missing, mismatched, unexpected = compare_state_dicts(own, state)
    required_missing = [k for k in missing if not optional.match(k)]
    if (required_missing or mismatched or unexpected) and strict:
        raise CheckpointMismatchError(_report(path, required_missing, mismatched, unexpected))
    loadable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    module.load_state_dict(loadable, strict=False)
    msg = f'Loaded {len(loadable)}/{len(own)} backbone tensors from {path}'
    if missing:
        msg += f'; newly initialised: {_short(missing)}'
    if not strict and (required_missing or mismatched or unexpected):
        msg += '\n' + _report(path, required_missing, mismatched, unexpected)
    print_log(msg, logger='current', level=30 if (missing or not strict) else 20)


def compare_state_dicts(own: Dict, state: Dict):
    """(missing, shape-mismatched, unexpected) keys of ``state`` against ``own``."""
    missing = [k for k in own if k not in state]
    mismatched = [f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
                  for k in own if k in state and state[k].shape != own[k].shape]
    unexpected = [k for k in state if k not in own]
    return missing, mismatched, unexpected


def checkpoint_state_dict(path: str, map_location='cpu') -> Dict[str, torch.Tensor]:
    """The weights in a training-form checkpoint file (its ``state_dict`` / ``model``,
    or the file itself if it is a bare state dict), loaded safely."""
    return _state_dict(_training_form(safe_load(path, map_location), path))


def check_state_dict(model: torch.nn.Module, state: Dict, path: str, what: str = 'this model',
                     hint: Optional[str] = None) -> None:
    """Raise :class:`CheckpointMismatchError`, with the mismatches summarised and
    ``hint`` (default: use the training config), unless ``state`` holds exactly
    ``model``'s keys and shapes."""
    missing, mismatched, unexpected = compare_state_dicts(model.state_dict(), state)
    if missing or mismatched or unexpected:
        raise CheckpointMismatchError(_report(path, missing, mismatched, unexpected, what=what,
                                              hint=_MODEL_HINT if hint is None else hint))


def check_model_checkpoint(model: torch.nn.Module, path: str) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``path`` holds exactly ``model``'s
    keys and shapes (mmengine's ``load_from`` would only warn)."""
    check_state_dict(model, checkpoint_state_dict(path), path)


def _short(keys: Iterable[str], n: int = 8) -> str:
    keys = list(keys)
    return ', '.join(keys[:n]) + (f' ... (+{len(keys) - n} more)' if len(keys) > n else '')


_PRETRAINED_HINT = ('  Is it a checkpoint of the same variant (arch) and the right prefix? '
                    'To load what matches anyway, add strict=False to the Pretrained init_cfg.')
_MODEL_HINT = ('  Was it trained with this config, i.e. the same model and variant (arch)? '
               'Pass the config the checkpoint was trained with.')


def _report(path, missing, mismatched, unexpected, what='this S2AFormer backbone',
            hint=_PRETRAINED_HINT) -> str:
    lines = [f'Checkpoint {path!r} does not match {what}:']
    if missing:
        lines.append(f'  {len(missing)} missing keys: {_short(missing)}')
    if mismatched:
        lines.append(f'  {len(mismatched)} shape mismatches: {_short(mismatched, 4)}')
    if unexpected:
        lines.append(f'  {len(unexpected)} unexpected keys: {_short(unexpected)}')
    if hint:
        lines.append(hint)
    return '\n'.join(lines)


class AtomicLocalBackend(LocalBackend):
    """Local file backend whose writes are atomic: a temporary file in the same
    directory is written, fsync'ed and renamed over the target (``os.replace``).

    mmengine's ``LocalBackend.put`` writes the checkpoint in place, so a job killed
    while saving leaves a truncated ``iter_N.pth``. With this backend a kill leaves
    either the complete new file or none, and the previous checkpoint stays usable.
    Select it with ``default_hooks.checkpoint.backend_args=dict(backend='atomic_local')``
    (the project's tools do so by default).
    """

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        self._atomic_write(obj, filepath)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
        self._atomic_write(obj.encode(encoding), filepath)

    @staticmethod
    def _atomic_write(data: bytes, filepath: Union[str, Path]) -> None:
        filepath = os.fspath(filepath)
        folder = os.path.dirname(os.path.abspath(filepath))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(filepath)}.',
                                   suffix='.tmp')
        try:
            with os.fdopen(fd, 'wb') as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, filepath)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


register_backend('atomic_local', AtomicLocalBackend, force=True)
