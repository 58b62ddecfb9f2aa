"""The whole suite runs monkey-patched, as `wxmgw serve` does: patch first, before any import."""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402

from hypothesis import HealthCheck, settings  # noqa: E402

# The fuzz properties: a short run in `make test` (about a minute in all), a
# long one in `make fuzz` (HYPOTHESIS_PROFILE=fuzz).
settings.register_profile(
    "default", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "fuzz", max_examples=20000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
