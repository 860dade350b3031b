"""`swarm` re-exports the scheduler API without loading torch, hivemind or the daemons."""
import subprocess
import sys

import swarm
import swarm.scheduler


def test_the_scheduler_api_is_re_exported():
    assert {"Scenario", "Plan", "plan", "predict", "replan"} <= set(swarm.__all__) <= set(swarm.scheduler.__all__)
    assert all(getattr(swarm, name) is getattr(swarm.scheduler, name) for name in swarm.__all__)


def test_import_stays_light():
    code = "import sys, swarm; print(sorted(m for m in ('torch', 'hivemind', 'zmq') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
