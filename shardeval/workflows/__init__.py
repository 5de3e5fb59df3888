"""What a user touches: the CLI, reports on disk. Never does arithmetic on features."""
