"""Command line entry point and, later, the cluster builder."""
