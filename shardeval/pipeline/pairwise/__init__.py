"""The block-pair engine: sample metrics that sum, or take order statistics, over pairs of
rows, and the passes that serve KID, CMMD and PRDC together."""
