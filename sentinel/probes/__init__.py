"""Runtime probes: run the user's model on real tensors and prove (or disprove) that it trains.

This package imports torch; nothing outside it does.
"""
