"""Container HEALTHCHECK: exit 0 when the service on this host answers 200 on /v2/health/ready.

Standard library only (no curl in the images). The port is the service's own setting,
`MPLSTM_PORT` (default 8000), so a container that moves its port stays checked.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

READY_PATH = "/v2/health/ready"


def ready_url(environ: Mapping[str, str] = os.environ) -> str:
    """The readiness URL of the service in this container."""
    return f"http://127.0.0.1:{environ.get('MPLSTM_PORT', '8000')}{READY_PATH}"


def main() -> int:
    """0 when ready, 1 otherwise (with the reason on stderr, which Docker keeps in its log)."""
    url = ready_url()
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(f"{url}: HTTP {exc.code}", file=sys.stderr)
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
