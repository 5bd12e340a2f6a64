"""Farm side: what runs inside the render container (``hython`` or ``husk``).

``render.py`` and ``husk.py`` are copied, with ``markers.py`` and ``protocol.py``, into each
job bundle's ``hpcdock_farm/`` directory, so they must keep working as plain scripts next to
those as well as inside this package.
"""
