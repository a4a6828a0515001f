"""Another Python service asks keystile whether a key may pass (see examples/__init__.py for the server).

    KEYSTILE_URL=http://localhost:8000 KEYSTILE_VERIFIER_KEY=ks_... python -m examples.client_verify ks_...

Prints the answer's code; exits 0 when the key is valid. The verifier key holds the scope `keys:verify`.
"""

from __future__ import annotations

import os
import sys

from keystile.client import KeystileClient


def main(presented_key: str) -> int:
    with KeystileClient(os.environ["KEYSTILE_URL"], api_key=os.environ["KEYSTILE_VERIFIER_KEY"]) as keystile:
        result = keystile.verify(presented_key, scopes=["reports:write"])
    print(result.code)  # VALID, NOT_FOUND, REVOKED, INSUFFICIENT_SCOPES, RATE_LIMITED, ...
    return 0 if result.valid else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
