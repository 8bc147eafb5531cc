"""Privacy and utility metrics (ALGORITHMS §8)."""
