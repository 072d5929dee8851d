"""The console (``sdg console``): review uncertain labels, watch the pipeline live, look back at history."""
