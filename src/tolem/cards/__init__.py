"""Saved cards: the encrypted card vault behind cardSave and card verification."""
