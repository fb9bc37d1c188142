"""moto in server mode for credfs's ECR tests.

moto answers GetAuthorizationToken with an expiresAt of 2015-01-01; this
launcher makes it now + CREDFS_TEST_TOKEN_LIFETIME seconds (default 12 h)
and appends one line to CREDFS_TEST_CALLS_FILE per call, so tests can count
provider calls at the server.

    python moto_ecr.py PORT
"""

import datetime
import os
import sys

from moto.ecr import responses
from moto.server import main

LIFETIME = float(os.environ.get("CREDFS_TEST_TOKEN_LIFETIME", "43200"))
CALLS_FILE = os.environ.get("CREDFS_TEST_CALLS_FILE")


class _FreshExpiry(datetime.datetime):
    """Stands in for moto's fixed 2015-01-01 expiry."""

    def __new__(cls, *args, **kwargs):
        if args[:3] == (2015, 1, 1):
            now = datetime.datetime.now(datetime.timezone.utc)
            return now + datetime.timedelta(seconds=LIFETIME)
        return datetime.datetime.__new__(cls, *args, **kwargs)


responses.datetime = _FreshExpiry
_original = responses.ECRResponse.get_authorization_token


def _counted(self):
    if CALLS_FILE:
        with open(CALLS_FILE, "a") as calls:
            calls.write("GetAuthorizationToken\n")
    return _original(self)


responses.ECRResponse.get_authorization_token = _counted

if __name__ == "__main__":
    main(["-H", "127.0.0.1", "-p", sys.argv[1]])
