"""The per-step log of a run, kept in the run folder so that it survives interruptions and resumes.

``OUTPUT_DIR/history.jsonl`` holds one JSON object per optimizer step (``{"step": 12.0, "loss_actor": ..., ...}``),
appended as the run goes. A resumed run first drops the records after its checkpoint's step (steps it repeats), so
the file always describes one run from step 1, however often it was interrupted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from diffrl.io import atomic_write_text

HISTORY_FILE = "history.jsonl"


def read_history(output_dir: str | os.PathLike) -> list[dict[str, float]]:
    """The records of ``output_dir/history.jsonl`` in step order ([] if there is none).

    A torn last line (the process was killed while appending it) is skipped.
    """
    path = Path(output_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class HistoryLog:
    """Appends the records of the run in `output_dir`, starting after step `start`."""

    def __init__(self, output_dir: str | os.PathLike, start: int) -> None:
        self.path = Path(output_dir) / HISTORY_FILE
        kept = [record for record in read_history(output_dir) if record.get("step", 0) <= start]
        if self.path.exists():
            atomic_write_text(self.path, "".join(json.dumps(record) + "\n" for record in kept))

    def append(self, record: dict[str, float]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
