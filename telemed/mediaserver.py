"""`python -m telemed.mediaserver`: the embedded media server as the service's child, logging
in the service's format so the supervisor keeps each line's level and call id."""

from __future__ import annotations

from mediaserver.__main__ import main
from telemed.logs import configure_logging

if __name__ == "__main__":
    main(configure_logging)
