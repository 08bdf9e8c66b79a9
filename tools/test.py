"""Evaluate a checkpoint with mmpretrain, mmsegmentation or mmdetection.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out preds.pkl]
                         [--show-dir DIR] [--show [--wait-time S]] [--tta] [--cfg-options k=v ...]
                         [--launcher {none,pytorch,slurm,mpi}]
    bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [args]

The metrics are printed as ``[s2aformer] test metrics: {json}`` and written to
``<work-dir>/test_metrics.json``.
"""
from s2aformer_mm.engine import USER_ERRORS, parse_test_args, run_test


def main():
    args = parse_test_args()
    try:
        run_test(args)
    except USER_ERRORS as e:
        raise SystemExit(f'[s2aformer] ERROR: {e}') from None


if __name__ == '__main__':
    main()
