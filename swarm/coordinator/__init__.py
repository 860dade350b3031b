"""The coordinator daemon: plans from live peer records, the step protocol, churn, checkpoints.

    config = from_args(parser.parse_args())        # the `swarm-coordinator` flags
    Coordinator(config).run(stop_event)            # 0 after the last step
"""
from .checkpoint import Checkpoint, read_latest, write_checkpoint
from .config import CoordinatorConfig, add_arguments, from_args
from .daemon import Coordinator
from .report import RunReport

__all__ = ["Coordinator", "CoordinatorConfig", "add_arguments", "from_args", "Checkpoint", "read_latest",
           "write_checkpoint", "RunReport"]
