"""Test launcher, run by torchrun: `tests/killed_extract.py DB RANK AFTER` extracts as `annotator --db DB extract
--workers 1 --batch-size 16 --flush-every 16` does, with a hook that SIGKILLs rank RANK once it has done AFTER
images (a crash at a known point, for the resume test)."""
import os
import signal
import sys

from annotator import distributed
from annotator.round_config import load_round_config
from annotator.store import Store


def main(db: str, rank: int, after: int) -> None:
    def kill(done: int, total: int) -> None:
        if done >= after:
            os.kill(os.getpid(), signal.SIGKILL)

    me = distributed.world_from_env()[0]
    with Store(db) as store:
        distributed.extract(store, load_round_config(store), batch_size=16, num_workers=1, flush_rows=16,
                            on_rank_progress=kill if me == rank else None)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
