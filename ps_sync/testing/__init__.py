"""Test clusters: in-process (one per interpreter) and multi-process."""
