"""Run under torchrun by tests/test_dist.py: several `debiaskit` commands in one process group (one launch
instead of one per command). argv[1]: a JSON list of argument lists, e.g. [["audit", "RUN"], ["ffw", "RUN", ...]]."""

from __future__ import annotations

import json
import sys

from debiaskit import _dist
from debiaskit.cli import app
from debiaskit.cli._common import console
from debiaskit.ffw import _pipeline

# the ranks' parity of the written folders is checked here, on a 1-epoch toy model that is near chance itself: FFW's
# do-no-harm guard (tests/test_ffw_no_harm.py) would refuse its output, so it is recorded and not enforced
_pipeline.enforce = lambda record, result: None

if __name__ == "__main__":
    assert _dist.init_from_env(), "run me with torchrun"
    console.quiet = not _dist.is_main_process()
    try:
        for args in json.loads(sys.argv[1]):
            app(args, standalone_mode=False)
    finally:
        _dist.shutdown()
