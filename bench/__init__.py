"""faceprivbench: a benchmark harness for face-recognition privacy defenses."""
__version__ = "0.2.0"  # in every stage key: a bump retires stages computed by older code
