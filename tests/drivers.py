"""Driver processes for the tests that kill them: started in their own process group, so that a
SIGKILL reaches the driver and then whatever its local Ray runtime left."""

from __future__ import annotations

import os
import signal
import subprocess


def kill_group(driver: subprocess.Popen) -> None:
    """SIGKILL the driver, then its process group (its Ray runtime's processes), and reap it."""
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=60)
    try:
        os.killpg(driver.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
