"""Dataset loaders → `FaceData`. Each loader is registered in ``bench.core.registry.DATASETS`` as
``loader(cfg: DataConfig, seed: int) -> FaceData``."""
from bench.data.facedata import FaceData, FaceSet, VerificationSet  # noqa: F401
from bench.data import folder, orl, rec  # noqa: F401,E402  (registers "folder", "orl", "rec")
