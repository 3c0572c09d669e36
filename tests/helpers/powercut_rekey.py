"""The power-cut torture's rekey child: ``connectorsync rekey`` on a disk that keeps only what
was fsynced, cut at a given I/O operation (:class:`~connectorsync.testing.powercut.PowerCutVFS`).

Prints ``end OPS`` when the rekey ran to its end without a cut (then the power goes anyway:
no close); a cut ends the process with :data:`~connectorsync.testing.powercut.CUT_EXIT`.

Usage: python -m tests.helpers.powercut_rekey CACHE OLD_KEY_FILE NEW_KEY_FILE CUT_AT STEP
(a key file ``-``: none, plain; CUT_AT 0: never cut).
"""

from __future__ import annotations

import os
import sys

from connectorsync.cache.rekey import rekey
from connectorsync.keysource import read_key_file
from connectorsync.testing.powercut import PowerCutVFS


def main() -> None:
    path, old, new, cut_at, step = sys.argv[1:6]
    vfs = PowerCutVFS(cut_at=int(cut_at) or None)
    rekey(
        path,
        None if old == "-" else read_key_file(old),
        None if new == "-" else read_key_file(new),
        step=int(step),
    )
    os.write(1, f"end {vfs.ops}\n".encode())
    os._exit(0)  # the power goes after it all the same: nothing unsynced survives


if __name__ == "__main__":
    main()
