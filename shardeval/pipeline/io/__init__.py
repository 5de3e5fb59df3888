"""Reading and writing: feature stores opened and checked, statistics files, digests of what
was read, outputs written atomically, synthetic features."""
