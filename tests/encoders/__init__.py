"""Encoders against their reference implementations (pytorch-fid, clean-fid, torchvision).

These need packages the main environment does not have, so they run in an environment of their
own (marker ``encoders``), and fail, never skip, when a reference package is missing.
"""
