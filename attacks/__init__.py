"""Built-in attacks; importing this package registers them in ``bench.registry.ATTACKS``."""
from attacks import cgan as _cgan  # noqa: F401,E402  (registers "cgan")
from attacks import decoders as _decoders  # noqa: F401,E402  (registers resrec, urec, transrec)
