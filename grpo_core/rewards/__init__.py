"""Reward scoring: final-answer extraction and checks (`answers`), the reward functions and
their weighted sum (`functions`)."""
