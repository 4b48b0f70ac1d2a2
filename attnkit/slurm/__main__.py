"""python -m attnkit.slurm task RUN_DIR ROUND: what sbatch runs on each node."""
import os
import sys

from attnkit.slurm.node import task


def main(argv=None) -> int:
    argv = argv or sys.argv[1:]
    if len(argv) == 3 and argv[0] == "task":
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"),
                                                              "ignore::FutureWarning"]))
        return task(argv[1], int(argv[2]))
    print("usage: python -m attnkit.slurm task RUN_DIR ROUND (run by sbatch)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
