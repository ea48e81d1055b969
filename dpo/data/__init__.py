"""Preference data: read sources, check every row, drop duplicates, mix, split by prompt, expand multi-response
rows into pairs, augment the training pairs, and count it all in the data card (prepare.py is the order)."""
