"""Developer tools run on demand (``make mutation``), never by the test suite."""
