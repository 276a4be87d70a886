"""The receiver's one fact that must outlive it: which stream sequence a position of the local
ring corresponds to. Written once (before the first record goes in) per ring incarnation and
stream; the ring's own write position, which the ring publishes atomically, does the rest:

    seq of the next record to write = base_seq + (producer.position - base_pos)

so after a kill -9 anywhere, even between the ring write and the XACK, the bridge knows exactly
which records of a replayed entry the ring already holds."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "shmpipe" / "bridge"


@dataclass(frozen=True)
class SeqAnchor:
    ring_id: str
    stream: str
    epoch: str
    base_seq: int
    base_pos: int

    def next_seq(self, position: int) -> int:
        return self.base_seq + position - self.base_pos


class AnchorFile:
    def __init__(self, state_dir: Path, ring_name: str) -> None:
        self.path = Path(state_dir) / f"{ring_name}.json"

    def load(self, ring_id: str, stream: str) -> SeqAnchor | None:
        """The anchor for this ring incarnation and stream; None when there is none yet (a file
        about another incarnation of the ring or another stream is about records not in it)."""
        try:
            data = json.loads(self.path.read_text())
            anchor = SeqAnchor(str(data["ring_id"]), str(data["stream"]), str(data["epoch"]),
                               int(data["base_seq"]), int(data["base_pos"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise OSError(f"bridge state {self.path} is unreadable ({exc}); remove it only if ring "
                          f"{ring_id.split('@')[0]!r} is re-created too") from None
        if anchor.ring_id != ring_id or anchor.stream != stream:
            return None
        return anchor

    def save(self, anchor: SeqAnchor) -> None:
        """Atomic (write, fsync, rename): a reader sees the old anchor or the new one, never half."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp.{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(asdict(anchor), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
