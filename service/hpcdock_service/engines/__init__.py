"""Container engines. The scheduler talks to :class:`~.base.Engine` only; which engine it is
(rootless Podman or Docker through the docker SDK today, cluster engines later) is decided
once, at start-up, by :func:`.discovery.connect`."""
