"""Fuzzing: hypothesis settings profiles for the suite, and atheris harnesses.

``MESHGATE_FUZZ`` picks the profile the property tests run under:

* ``fast`` (the default, ``make test``): few examples, a fixed seed, no
  shrinking and no example database, so the suite stays quick and repeatable;
* ``long`` (``make fuzz``): many examples, random seeds, shrinking to the
  smallest failing input, failures kept in ``.hypothesis/`` and tried first
  next time. ``MESHGATE_FUZZ_EXAMPLES`` overrides its example counts.

The atheris harnesses beside this file (``python -m tests.fuzz.http_head``,
``python -m tests.fuzz.path_normalize``) take libFuzzer's options, e.g.
``-max_total_time=300``; ``make fuzz`` runs each for ``FUZZ_SECONDS``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

PROFILE = os.environ.get("MESHGATE_FUZZ", "fast")
_LONG = PROFILE == "long"


def profile(fast_examples: int, long_examples: int) -> settings:
    """Settings for one property test under the selected profile."""
    if _LONG:
        count = int(os.environ.get("MESHGATE_FUZZ_EXAMPLES", long_examples))
        return settings(max_examples=count, deadline=None,
                        suppress_health_check=[HealthCheck.too_slow,
                                               HealthCheck.data_too_large])
    return settings(max_examples=fast_examples, deadline=None, derandomize=True,
                    database=None, phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.data_too_large])
