"""Built-in defenses; importing this package registers them in ``bench.registry.DEFENSES``."""
