import json
import os
from typing import Any


def record(event: Any) -> None:
    """Append ``train.step`` events to the JSONL file ``$ACME_EVENT_LOG`` names, if set."""
    path = os.environ.get("ACME_EVENT_LOG")
    if not path or event.kind != "train.step":
        return
    line = {"job": event.job_id, "step": event.step, "loss": event.data.get("loss")}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")
