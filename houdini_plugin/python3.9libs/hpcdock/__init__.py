"""hpcdock: submit Houdini ROPs as OpenJD job bundles to rootless GPU containers.

This package runs inside Houdini's Python (3.9 to 3.11) and on the command line. Only
``hpcdock.houdini`` may import ``hou``; everything else is importable without Houdini.
"""

__version__ = "0.1.0"
