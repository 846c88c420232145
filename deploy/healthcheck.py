"""The container's health check: exit 0 when GET /health answers `ready`, 1 otherwise (loading, draining,
unhealthy, or no answer). Standard library only; the port is TOKSERVE_PORT's, as the server reads it."""

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('TOKSERVE_PORT', '8000')}/health"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as error:
        print(f"{url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
