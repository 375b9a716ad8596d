"""What every worker process of the embedded local cluster runs first (Ray's
worker_process_setup_hook, named by module path in runtime.init_ray): stdlib only, since every
worker pays for its imports.
"""

from __future__ import annotations

import logging

PLACEMENT_GROUP_CLEANER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def quiet_worker_logs() -> None:
    """Ray Train's PlacementGroupCleaner asks the State API, every second, whether the train
    controller lives; without a dashboard (ray.include_dashboard false, the laptop default) there
    is no State API, and each ask printed a warning: 638 of a demo run's 1,046 lines. The
    cleaner's job (removing a dead controller's placement group) ends with the embedded cluster
    anyway, so its warnings go; its errors still show."""
    logging.getLogger(PLACEMENT_GROUP_CLEANER).setLevel(logging.ERROR)
