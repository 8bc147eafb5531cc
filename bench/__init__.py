"""faceprivbench: a benchmark harness for face-recognition privacy defenses."""
__version__ = "0.1.0"
