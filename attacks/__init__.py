"""Built-in attacks; importing this package registers every module's attacks in
``bench.registry.ATTACKS`` (each module of the package is imported, so a new file is picked up
with no other edit)."""
import importlib as _importlib
import pkgutil as _pkgutil

for _module in _pkgutil.iter_modules(__path__, f"{__name__}."):
    _importlib.import_module(_module.name)
