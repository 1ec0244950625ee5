"""Test-wide set-up.

Triton reads TRITON_INTERPRET when it is first imported (diffusers and torch._dynamo import it too), so the
kernel tests' interpreter mode must be set before anything else is imported.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
