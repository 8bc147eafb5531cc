"""The contract that defenses and attacks both stand on (ARCHITECTURE "What grows next (v3)").

``contract`` (Leak, Reconstruction, knowledge rules), ``training`` (loops, one L1-decoder loop),
``registry`` (name → factory, no plugin imports), ``errors``, ``context`` (seeded randomness).
Nothing here imports outside ``bench.core``: an edit to a plugin never retires another plugin's
stages through this package, and neither side of the contract owns it.
"""
