"""hpcdock-service: the daemon that runs job bundles as containers on a rootless engine."""

__version__ = "0.1.0"
