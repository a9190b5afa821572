"""Fault injection for tests: Ray Train worker functions that die once, like a lost machine."""

from __future__ import annotations

import os
import time

DIE_AT_EPOCH = 3


def dying_train_loop(config: dict) -> None:
    """``mer.train.loop.train_loop``, but the rank-0 worker's process exits at the start of epoch
    ``DIE_AT_EPOCH`` on the first attempt; Ray Train restarts it from the last checkpoint.
    """
    import ray.train

    from mer.train import learner, loop

    first_attempt = ray.train.get_checkpoint() is None
    if first_attempt and ray.train.get_context().get_world_rank() == 0:
        epoch = learner.Learner.epoch

        def epoch_or_die(self, *args, **kwargs):
            if self.state["epoch"] + 1 == DIE_AT_EPOCH:
                time.sleep(5)  # let the controller collect the reports in flight, then die
                os._exit(1)
            return epoch(self, *args, **kwargs)

        learner.Learner.epoch = epoch_or_die
    loop.train_loop(config)
