"""Train with mmpretrain, mmsegmentation or mmdetection (the config's default_scope).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [PATH]] [--amp] [--auto-scale-lr] [--no-validate]
                          [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}]
    bash tools/dist_train.sh CONFIG NUM_PROCS [args]   # torchrun; gloo + CPU DDP without CUDA
"""
from s2aformer_mm.engine import USER_ERRORS, parse_train_args, run_train


def main():
    args = parse_train_args()
    try:
        run_train(args)
    except USER_ERRORS as e:
        raise SystemExit(f'[s2aformer] ERROR: {e}') from None


if __name__ == '__main__':
    main()
