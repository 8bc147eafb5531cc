"""Built-in defenses; importing this package registers them in ``bench.registry.DEFENSES``."""
from defenses import none, ppfr_fd  # noqa: E402,F401
from defenses import adamixup, dp_peep, mixing, mixup  # noqa: E402,F401  (issue #3)
from defenses import advface, duetface, feature_noise  # noqa: E402,F401  (issue #5)
