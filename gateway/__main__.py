"""``python -m relais.gateway --config FILE [--role router|tracker|all]``: run the gateway.

The same as ``relais gateway run``, without the command-line application around it (for
service managers and tests). Exit codes: 0 stopped cleanly (SIGTERM/SIGINT), 1 a check
failed, 2 bad settings, 3 the broker could not be reached or refused.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from relais.agents.logs import configure_logging
from relais.gateway.service import ROLES, run_gateway
from relais.gateway.settings import load_settings
from relais.schemas.errors import ConfigError, RelaisError, TransportError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the gateway, return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m relais.gateway")
    parser.add_argument("--config", type=Path, required=True, help="gateway settings (TOML)")
    parser.add_argument("--role", choices=("router", "tracker", "all"), default="all")
    args = parser.parse_args(argv)
    configure_logging()
    roles = ROLES if args.role == "all" else frozenset({args.role})
    try:
        asyncio.run(run_gateway(load_settings(args.config), roles))
    except ConfigError as exc:
        print(f"error [{exc.reason.value}]: {exc}", file=sys.stderr)
        return 2
    except TransportError as exc:
        print(f"error [{exc.reason.value}]: {exc}", file=sys.stderr)
        return 3
    except RelaisError as exc:
        print(f"error [{exc.reason.value}]: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
