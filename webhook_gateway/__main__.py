"""`python -m webhook_gateway [--host H] [--port P]`: the gateway alone, with the settings in effect."""

from __future__ import annotations

import argparse
import sys

from core.settings import SettingsError, get_settings
from webhook_gateway.app import GatewayConfigError
from webhook_gateway.server import DEFAULT_HOST, DEFAULT_PORT, serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m webhook_gateway", description="Receive signed PeopleForce webhooks."
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"default {DEFAULT_HOST}")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    parser.add_argument(
        "--fd",
        type=int,
        help="accept on this listening socket, inherited from a supervisor that keeps it open "
        "across restarts (`up` does; so does systemd socket activation), instead of binding",
    )
    arguments = parser.parse_args(argv)
    try:
        serve(get_settings(), host=arguments.host, port=arguments.port, fd=arguments.fd)
    except (SettingsError, GatewayConfigError) as error:
        print(f"webhook gateway: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
