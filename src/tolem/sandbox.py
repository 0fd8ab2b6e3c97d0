"""ePay's public sandbox data (EPAY.md section 2), in one place and free of imports:
the seed, the test fixtures, the CLI and the SDK's examples all read it here."""

from __future__ import annotations

CLIENT_ID = "test"
CLIENT_SECRET = "yF587AV9Ms94qN2QShFzVR3vFnWkhjbAK3sG"  # noqa: S105 - public test data
TERMINAL_ID = "67e34d63-102f-4bd1-898e-370781d0074d"
MERCHANT_NAME = "ePay test merchant"
#: The cabinet login the original document prints.
CABINET_EMAIL = "epay@halykbank.kz"
CABINET_PASSWORD = "XZG1E@Mm"  # noqa: S105 - public test data
