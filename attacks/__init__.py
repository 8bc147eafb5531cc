"""Built-in attacks; importing this package registers them in ``bench.registry.ATTACKS``."""
