"""The engine and its states: where the task graph runs, how shard states merge, and
the chunk steps that turn a block into a state on a worker's device."""
