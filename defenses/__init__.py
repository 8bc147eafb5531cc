"""Built-in defenses, one module each; :func:`bench.plugins.load_plugins` imports every module of
this package, so a file written by ``python -m bench new-defense NAME`` is registered with no
other edit."""
