"""Shared test set-up: offline hub, and the miniature world's synthetic:* dataset specs registered."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import famix.world  # noqa: E402, F401  (registers synthetic:* specs, as the famix command does)
