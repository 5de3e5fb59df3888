"""Images into features: image sources (listing, fingerprint, decoding) and extraction."""
