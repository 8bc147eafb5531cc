"""Built-in attacks, one module each; :func:`bench.plugins.load_plugins` imports every module of
this package, so a new file is registered with no other edit."""
