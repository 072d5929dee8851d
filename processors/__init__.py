"""Stream processors: one typed function per module; the runners in ``streams`` wire them to topics."""
