"""sdg-edge: the command line, the settings and the demo."""
